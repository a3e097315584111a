"""The buckets of one (key, model): an RPM cell and a TPM cell, reserved together.

A request is admitted only when both cells have room at once; when either is
short, nothing is taken and the later of the two fit times is the answer. A
cooldown (after a provider's 429) blocks the pair until it ends.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from maxllm_gate.limits.gcra import GcraCell

__all__ = ["AdmissionMark", "BucketPair", "BucketSnapshot", "Cost", "LimitSpec", "RateLimitInfo"]


class RateLimitInfo(Protocol):
    """A provider's report of its limits (built by ``providers.headers``)."""

    @property
    def limit_requests(self) -> float | None: ...
    @property
    def remaining_requests(self) -> float | None: ...
    @property
    def limit_tokens(self) -> float | None: ...
    @property
    def remaining_tokens(self) -> float | None: ...
    @property
    def requests_per_day(self) -> bool: ...


@attrs.frozen(slots=True)
class Cost:
    """What one request takes from a (key, model): requests and tokens.

    ``over_tokens`` of the tokens may be over-estimated (the prompt's safety
    buffer); they can be released once the real usage is known.
    """

    tokens: float
    requests: float = 1.0
    over_tokens: float = 0.0


@attrs.frozen(slots=True)
class LimitSpec:
    """Resolved limits of one (key, model): rates per minute and bucket capacities."""

    rpm_limit: float
    tpm_limit: float
    rpm_capacity: float
    tpm_capacity: float

    @classmethod
    def from_limits(cls, rpm_limit: float, tpm_limit: float, burst_seconds: float) -> LimitSpec:
        """Capacity is ``burst_seconds`` worth of each limit, and never below one unit."""
        return cls(
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            rpm_capacity=max(1.0, rpm_limit * burst_seconds / 60.0),
            tpm_capacity=max(1.0, tpm_limit * burst_seconds / 60.0),
        )


@attrs.frozen(slots=True)
class BucketSnapshot:
    """What a (key, model) could take right now, for strategies and ``capacity()``."""

    requests_available: float
    requests_capacity: float
    tokens_available: float
    tokens_capacity: float
    rpm_limit: float
    tpm_limit: float
    cooldown_remaining: float

    @property
    def utilization(self) -> float:
        """The fuller of the two buckets' used share, in [0, 1]; 1 while cooling down."""
        if self.cooldown_remaining > 0:
            return 1.0
        used_requests = 1.0 - self.requests_available / self.requests_capacity
        used_tokens = 1.0 - self.tokens_available / self.tokens_capacity
        return max(used_requests, used_tokens)


@attrs.frozen(slots=True)
class AdmissionMark:
    """How much a pair had admitted in all, right after one admission."""

    requests: float = 0.0
    tokens: float = 0.0


class BucketPair:
    """The RPM and TPM cells of one (key, model), plus its cooldown."""

    __slots__ = ("admitted", "anchor", "cooldown_until", "requests", "spec", "tokens")

    def __init__(self, spec: LimitSpec) -> None:
        self.spec = spec
        self.requests = GcraCell(spec.rpm_limit, spec.rpm_capacity)
        self.tokens = GcraCell(spec.tpm_limit, spec.tpm_capacity)
        self.cooldown_until = float("-inf")
        self.admitted = AdmissionMark()
        # The cells the last charge started from full, and its mark (see start()).
        self.anchor: tuple[AdmissionMark, tuple[GcraCell, ...]] | None = None

    def reserve(self, now: float, cost: Cost, margin: float = 0.0) -> float:
        """Take ``cost`` from both cells, or neither. Returns ``now`` or when it fits.

        ``margin`` seconds are added to every fit time, so that a caller whose
        arithmetic or clock differs slightly from the provider's stays behind it.
        """
        at = margin + max(
            self.cooldown_until,
            self.requests.fit_time(cost.requests),
            self.tokens.fit_time(cost.tokens),
        )
        if at > now:
            return at
        full = tuple(cell for cell in (self.requests, self.tokens) if cell.tat <= now)
        self.requests.charge(now, cost.requests)
        self.tokens.charge(now, cost.tokens, cost.over_tokens)
        self.admitted = AdmissionMark(
            self.admitted.requests + cost.requests, self.admitted.tokens + cost.tokens
        )
        self.anchor = (self.admitted, full) if full else None
        return now

    def learn(
        self,
        now: float,
        info: RateLimitInfo,
        *,
        measured_at: float,
        charged_tokens: float,
        charged_requests: float,
    ) -> None:
        """Fold in the limits a provider reported for a call admitted at
        ``measured_at``; see :meth:`GcraCell.learn`."""
        if info.remaining_tokens is not None:
            self.tokens.learn(
                now,
                remaining=info.remaining_tokens,
                measured_at=measured_at,
                capacity_floor=info.remaining_tokens + charged_tokens,
                limit_per_minute=info.limit_tokens,
            )
        if info.remaining_requests is not None and not info.requests_per_day:
            self.requests.learn(
                now,
                remaining=info.remaining_requests,
                measured_at=measured_at,
                capacity_floor=info.remaining_requests + charged_requests,
                limit_per_minute=info.limit_requests,
            )

    def start(self, mark: AdmissionMark, delay: float) -> None:
        """The call whose admission left ``mark`` leaves for the provider ``delay``
        seconds after it was admitted.

        A full bucket refills until a call arrives, so the provider's charge for
        the first call after a pause starts at its arrival, not at our
        admission. Where this call's charge started from full, ours starts that
        much later too, and so does everything admitted after it.
        """
        if self.anchor is None or self.anchor[0] is not mark:
            return
        _, cells = self.anchor
        self.anchor = None
        for cell in cells:
            cell.tat += max(0.0, delay)

    def release(self, now: float, tokens: float) -> float:
        """Give back over-reserved tokens, as far as that is still safe."""
        return self.tokens.release(now, tokens)

    def adjust(self, now: float, requests: float, tokens: float) -> None:
        """Charge positive amounts, refund negative ones."""
        for cell, amount in ((self.requests, requests), (self.tokens, tokens)):
            if amount > 0:
                cell.charge(now, amount)
            elif amount < 0:
                cell.refund(now, -amount)

    def cool_down(self, until: float) -> None:
        self.cooldown_until = max(self.cooldown_until, until)

    def utilization(self, now: float) -> float:
        """Same as ``snapshot(now).utilization``, without building the snapshot."""
        if self.cooldown_until > now:
            return 1.0
        # The larger share of either bucket in debt (inlined: every routing decision
        # asks every key).
        requests, tokens = self.requests, self.tokens
        used = max(
            (requests.tat - now) / (requests.interval * requests.capacity),
            (tokens.tat - now) / (tokens.interval * tokens.capacity),
        )
        return 0.0 if used <= 0.0 else min(used, 1.0)

    def snapshot(self, now: float) -> BucketSnapshot:
        return BucketSnapshot(
            requests_available=self.requests.available(now),
            requests_capacity=self.requests.capacity,
            tokens_available=self.tokens.available(now),
            tokens_capacity=self.tokens.capacity,
            rpm_limit=self.spec.rpm_limit,
            tpm_limit=self.spec.tpm_limit,
            cooldown_remaining=max(0.0, self.cooldown_until - now),
        )
