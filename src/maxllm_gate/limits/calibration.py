"""What one (key, model) learns about its provider's accounting, and applies to reservations.

Two lessons, both pure arithmetic on times passed in:

**The charge factor, from headers.** A provider whose limiter is a refilling
bucket reports, after each call, ``x-ratelimit-reset-tokens``: how long until
its bucket is full again. ``sent_at + reset`` is when it would be full: its
"theoretical arrival time". Between two reports, if the bucket never filled
up in between (the second call left before the first report's full time),
that time moved by exactly what the provider debited in between, divided by
its refill rate. The admission marks (:class:`~maxllm_gate.limits.AdmissionMark`,
shared by every process with Redis) say what we reserved for the same calls.
The ratio of the two, over the last few reports, is the factor by which the
provider charges more (or less) than our charge model: a provider that charges
1.3 times its character estimate, or counts with its own tokenizer, is learned
within a few calls. Errors in when a call reached the provider cancel out
between consecutive reports, as the sums telescope.

**The rate scale, from 429s without headers.** A key whose real limits are
below the configured ones, and whose provider sends no rate-limit headers,
can only be learned from its refusals: a 429 cuts the refused dimension's
scale (by half, or by a tenth once it has grown back to where 429s come), and
the scale grows back with time, fast at first, slowly near the last ceiling. Charging
``cost / scale`` on a bucket of the configured rate is the same as charging
``cost`` on one of ``scale`` times its rate and capacity. A key whose provider
sends headers has its limits proven by them: its scale never goes below 1.
"""

from __future__ import annotations

import math

from maxllm_gate.limits.buckets import Cost

__all__ = ["ChargeCalibration"]

#: A 429 without headers multiplies the refused dimension's rate by this ...
DECREASE = 0.5
#: ... or by this, once the rate has grown back since the last cut: it found the ceiling.
GENTLE_DECREASE = 0.9
#: The rate grows back by this share of the configured rate per minute, up to 95% of
#: where the last 429 came ...
FAST_RECOVERY_PER_MINUTE = 0.2
#: ... and by this beyond, where the next 429 is likely.
RECOVERY_PER_MINUTE = 0.01
_MIN_SCALE = 0.05
# A sample that lowers the factor spans this many reports: jitter at its two ends
# matters less ...
_SPAN = 4
# ... and each weighs this much less at the next: about the last 5 count ...
_DECAY = 0.8
# ... and moves the factor by this ratio at most.
_MAX_STEP = 1.5
# Refused calls remembered since the anchor, at most (a 429 storm with no answer).
_MAX_REFUSED = 256
# The learned factor stays in this range: beyond it, the provider's bucket is not
# what we model (a fixed window, another limit in the way) and the factor means nothing.
_FACTOR_RANGE = (0.25, 4.0)
# Added to the learned factor: the headers' rounding and the calls' order of arrival
# make it a little noisy. Below 1, the charge model is trusted until the provider is
# proven to charge clearly less (a factor under 0.97).
_CUSHION = 0.01
_CUSHION_BELOW_ONE = 0.03


class _Scale:
    """One dimension's rate scale: cut on a 429, grows back with time.

    It grows back fast up to 95% of the scale at which the last 429 came (the
    ceiling found so far), then slowly. A 429 before it grew back at all means the
    cut was not deep enough: cut by :data:`DECREASE` again. A 429 after it grew
    back means it found the ceiling again: cut only by :data:`GENTLE_DECREASE`.
    """

    __slots__ = ("at", "ceiling", "since")

    def __init__(self) -> None:
        self.at = 1.0  # the scale right after the last cut
        self.since = -math.inf  # when that cut was made
        self.ceiling = 1.0  # the scale at which the last 429 came

    def value(self, now: float) -> float:
        minutes = (now - self.since) / 60.0
        knee = max(self.at, 0.95 * self.ceiling)
        fast = self.at + FAST_RECOVERY_PER_MINUTE * minutes
        if fast <= knee:
            return min(1.0, fast)
        slow_minutes = minutes - (knee - self.at) / FAST_RECOVERY_PER_MINUTE
        return min(1.0, knee + RECOVERY_PER_MINUTE * slow_minutes)

    def cut(self, now: float, admitted_at: float) -> bool:
        """Cut after a 429 of a call admitted at ``admitted_at``; False if that call
        was admitted before the last cut (the cut already answered its overshoot)."""
        if admitted_at <= self.since:
            return False
        scale = self.value(now)
        if scale > self.at * 1.02:  # grown back since the last cut: a ceiling found
            self.ceiling = scale
            self.at = max(_MIN_SCALE, scale * GENTLE_DECREASE)
        else:  # not deep enough; the ceiling stays, for a fast way back after a storm
            self.at = max(_MIN_SCALE, scale * DECREASE)
        self.since = now
        return True


class ChargeCalibration:
    """The learned correction of one (key, model): see the module docs.

    >>> calibration = ChargeCalibration(tpm_limit=60_000)
    >>> calibration.reservation(Cost(tokens=500), now=0.0)
    Cost(tokens=500.0, requests=1.0, over_tokens=0.0)
    """

    __slots__ = (
        "_anchor",
        "_charged",
        "_debited",
        "_full_until",
        "_refused",
        "_span",
        "factor",
        "proven",
        "requests_scale",
        "samples",
        "tokens_scale",
        "tpm_limit",
    )

    def __init__(self, tpm_limit: float) -> None:
        self.tpm_limit = tpm_limit
        #: The provider's debit per unit of our charge, as learned (1.0 until then).
        self.factor = 1.0
        #: Reports that gave a sample of the factor.
        self.samples = 0
        #: Whether the provider has sent rate-limit headers: they prove its limits.
        self.proven = False
        self.requests_scale = _Scale()
        self.tokens_scale = _Scale()
        self._debited = 0.0
        self._charged = 0.0
        # The report samples start from: when the provider's bucket would be full,
        # and the admission mark (tokens reserved in all) right after that call.
        self._anchor: tuple[float, float] | None = None
        self._full_until = -math.inf  # the latest full time reported since the anchor
        self._span = 0  # reports since the anchor
        # (mark, tokens) of calls refused with a 429 since: the provider debited nothing.
        self._refused: list[tuple[float, float]] = []

    @property
    def applied_factor(self) -> float:
        """The factor reservations are multiplied by: the learned one, with a cushion."""
        if not self.samples:
            return 1.0
        if self.factor < 1.0:
            return min(1.0, self.factor + _CUSHION_BELOW_ONE)
        return self.factor + _CUSHION

    def reservation(self, cost: Cost, now: float) -> Cost:
        """What to reserve for ``cost``: corrected by the factor and the rate scales.

        No reservation takes more tokens than a minute of the key's configured
        limit: the debt one request can leave behind is a minute at most.
        """
        learned = self.samples or self.requests_scale.at != 1.0 or self.tokens_scale.at != 1.0
        if not learned and cost.tokens <= self.tpm_limit:
            return cost  # the usual case, on the hot path
        multiplier = self.applied_factor / self.tokens_scale.value(now)
        tokens = min(cost.tokens * multiplier, self.tpm_limit)
        return Cost(
            tokens=tokens,
            requests=cost.requests / self.requests_scale.value(now),
            over_tokens=min(tokens, cost.over_tokens * multiplier),
            output_tokens=cost.output_tokens,  # what it learns is the prompt's charge
        )

    def observe(
        self,
        *,
        sent_at: float,
        mark: float,
        full_in: float,
        limit_per_minute: float,
        multiplier: float | None = None,
    ) -> None:
        """Fold in a report: the call that left at ``sent_at``, admitted with
        ``mark``, left the provider's token bucket full again in ``full_in`` seconds
        (``x-ratelimit-reset-tokens``) at a refill of ``limit_per_minute``.

        ``multiplier`` is what that call's reservation was multiplied by (by
        default, what one would be now); the calls since the last report are
        taken to have had the same. Not the factor of now: calls admitted
        before the factor moved would read as charged less, and push it further.

        Report only calls that left alone (none other within the network's jitter
        of them): calls that leave together reach the provider in any order, so
        their reports cannot be matched with their marks.
        """
        self.proven = True
        full_at = sent_at + full_in
        anchor = self._anchor
        if anchor is not None and mark <= anchor[1]:
            return  # a call admitted before the anchor, answered late
        if anchor is None or sent_at >= self._full_until or limit_per_minute <= 0:
            # The first report, or the provider's bucket may have been full since the
            # anchor: what it debited in between is lost. Start again from here.
            self._restart(full_at, mark)
            return
        self._span += 1
        self._full_until = max(self._full_until, full_at)
        anchor_full_at, anchor_mark = anchor
        refused = sum(tokens for at, tokens in self._refused if anchor_mark < at <= mark)
        applied = self.applied_factor if multiplier is None else multiplier
        charged = (mark - anchor_mark - refused) / applied
        debited = (full_at - anchor_full_at) * limit_per_minute / 60.0
        if charged <= 0 or debited <= 0:
            self._restart(full_at, mark)
            return
        ratio = debited / charged
        # One that raises the factor is taken at once, as a 429 may be near; one that
        # lowers it waits for a longer span, as it may be noise.
        if ratio < self.factor and self._span < _SPAN:
            return
        ratio = min(self.factor * _MAX_STEP, max(self.factor / _MAX_STEP, ratio))
        self._debited = self._debited * _DECAY + ratio * charged
        self._charged = self._charged * _DECAY + charged
        low, high = _FACTOR_RANGE
        self.factor = min(high, max(low, self._debited / self._charged))
        self.samples += 1
        self._restart(full_at, mark)

    def _restart(self, full_at: float, mark: float) -> None:
        self._anchor = (full_at, mark)
        self._full_until = full_at
        self._span = 0
        self._refused = [entry for entry in self._refused if entry[0] > mark]

    def refused(self, *, mark: float, tokens: float) -> None:
        """A call admitted with ``mark``, reserving ``tokens``, was refused (a 429 or a
        400) or never sent: the provider debited nothing for it."""
        if self._anchor is None or mark > self._anchor[1]:  # a sample may span it
            self._refused.append((mark, tokens))
            if len(self._refused) > _MAX_REFUSED:  # no report came to prune them: start over
                self._anchor = None
                self._refused.clear()

    def rate_limited(self, now: float, *, admitted_at: float, dimension: str | None) -> bool:
        """A 429 of a call admitted at ``admitted_at``, for ``dimension``
        (``"requests"``, ``"tokens"``, or None when the provider did not say).

        Cuts the scale of that dimension (of both, when unknown), unless the
        provider's headers prove its limits. Returns whether it cut.
        """
        if self.proven:
            return False
        cut = False
        if dimension in (None, "requests"):
            cut |= self.requests_scale.cut(now, admitted_at)
        if dimension in (None, "tokens"):
            cut |= self.tokens_scale.cut(now, admitted_at)
        return cut

    def as_dict(self, now: float) -> dict[str, float]:
        """The learned values, for ``capacity()`` and the gateway's status."""
        return {
            "charge_factor": round(self.applied_factor, 4),
            "requests_scale": round(self.requests_scale.value(now), 4),
            "tokens_scale": round(self.tokens_scale.value(now), 4),
        }
