"""The buckets of one (key, model): an RPM cell and a TPM cell, and any extra
cells the provider enforces (output tokens per minute, requests or tokens per
day), reserved together.

A request is admitted only when every cell has room at once; when any is
short, nothing is taken and the latest of the fit times is the answer. A
cooldown (after a provider's 429) blocks the pair until it ends.

**Extra cells.** Most keys have only the two cells, and the hot path stays as
it was for them. An extra cell (:class:`CellSpec`) is a GCRA cell like the
others, with its own window (a minute or a day), that counts a weighted sum of
a request's cost: ``requests``, ``tokens`` and ``output_tokens``. An output-token
limit weighs only ``output_tokens``; a daily request cap only ``requests``; a
daily token cap ``tokens`` and ``output_tokens``. The Redis scripts read the
same weights, so neither backend knows the kinds by name.
"""

from __future__ import annotations

import math
from typing import Protocol

import attrs

from maxllm_gate.limits.gcra import GcraCell

__all__ = [
    "DAY",
    "AdmissionMark",
    "BucketPair",
    "BucketSnapshot",
    "CellSpec",
    "Cost",
    "LimitReport",
    "LimitSpec",
]

#: Seconds in the window of a daily cap.
DAY = 86_400.0


class LimitReport(Protocol):
    """What the buckets read of a provider's report of its limits: the shape of
    `maxllm_gate.providers.headers.RateLimitInfo`, which builds it from headers."""

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
    @property
    def limit_output_tokens(self) -> float | None: ...
    @property
    def remaining_output_tokens(self) -> float | None: ...


@attrs.frozen(slots=True)
class Cost:
    """What one request takes from a (key, model): requests and tokens.

    ``over_tokens`` of the tokens may be over-estimated (the prompt's safety
    buffer); they can be released once the real usage is known.
    ``output_tokens`` are charged apart from ``tokens`` where the provider
    limits output separately (Anthropic's OTPM): then ``tokens`` is the input.
    """

    tokens: float
    requests: float = 1.0
    over_tokens: float = 0.0
    output_tokens: float = 0.0


@attrs.frozen(slots=True)
class CellSpec:
    """An extra cell of a (key, model): ``limit`` units every ``window`` seconds,
    with room for ``capacity`` units, counting a request's cost by weight.

    ``name`` is the config field it enforces (``"otpm_limit"``, ``"rpd_limit"``,
    ``"tpd_limit"``): what ``status()`` and errors call it.
    """

    name: str
    limit: float
    window: float
    capacity: float
    requests: float = 0.0
    tokens: float = 0.0
    output_tokens: float = 0.0

    @property
    def limit_per_minute(self) -> float:
        return self.limit * 60.0 / self.window

    def amount(self, cost: Cost) -> float:
        """What ``cost`` takes from this cell."""
        return (
            self.requests * cost.requests
            + self.tokens * cost.tokens
            + self.output_tokens * cost.output_tokens
        )

    def report(self, info: LimitReport) -> tuple[float, float | None] | None:
        """``(remaining, limit per minute)`` if ``info`` reports on this cell."""
        if self.name == "rpd_limit" and info.requests_per_day:
            remaining, limit = info.remaining_requests, info.limit_requests
        elif self.name == "otpm_limit":
            remaining, limit = info.remaining_output_tokens, info.limit_output_tokens
        else:
            return None
        if remaining is None:
            return None
        return remaining, None if limit is None else limit * 60.0 / self.window

    @classmethod
    def output_tokens_per_minute(cls, limit: float, burst_seconds: float) -> CellSpec:
        """Output tokens per minute (Anthropic's OTPM), with the pair's burst."""
        capacity = max(1.0, limit * burst_seconds / 60.0)
        return cls("otpm_limit", limit, 60.0, capacity, output_tokens=1.0)

    @classmethod
    def requests_per_day(cls, limit: float) -> CellSpec:
        """A daily request cap: the whole day's requests may be spent at once."""
        return cls("rpd_limit", limit, DAY, float(limit), requests=1.0)

    @classmethod
    def tokens_per_day(cls, limit: float) -> CellSpec:
        """A daily token cap, counting input and output."""
        return cls("tpd_limit", limit, DAY, float(limit), tokens=1.0, output_tokens=1.0)


@attrs.frozen(slots=True)
class LimitSpec:
    """Resolved limits of one (key, model): rates per minute and bucket capacities,
    and the extra cells beside them."""

    rpm_limit: float
    tpm_limit: float
    rpm_capacity: float
    tpm_capacity: float
    extra: tuple[CellSpec, ...] = ()

    @classmethod
    def from_limits(
        cls,
        rpm_limit: float,
        tpm_limit: float,
        burst_seconds: float,
        extra: tuple[CellSpec, ...] = (),
    ) -> LimitSpec:
        """Capacity is ``burst_seconds`` worth of each limit, and never below one unit."""
        return cls(
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            rpm_capacity=max(1.0, rpm_limit * burst_seconds / 60.0),
            tpm_capacity=max(1.0, tpm_limit * burst_seconds / 60.0),
            extra=extra,
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
    extra: tuple[CellSnapshot, ...] = ()

    @property
    def utilization(self) -> float:
        """The fuller of the two buckets' used share, in [0, 1]; 1 while cooling down.

        Extra cells do not count: a daily cap half spent does not make a key
        busier for routing; a full one blocks it (see :meth:`exhausted`).
        """
        if self.cooldown_remaining > 0:
            return 1.0
        used_requests = 1.0 - self.requests_available / self.requests_capacity
        used_tokens = 1.0 - self.tokens_available / self.tokens_capacity
        return max(used_requests, used_tokens)

    def exhausted(self) -> list[str]:
        """The limits with less than one unit left, by config name (``"rpd_limit"``)."""
        names = [cell.name for cell in self.extra if cell.available < 1.0]
        if self.tokens_available < 1.0:
            names.insert(0, "tpm_limit")
        if self.requests_available < 1.0:
            names.insert(0, "rpm_limit")
        return names

    def spent(self, cost: Cost | None = None) -> list[str]:
        """Why ``cost`` (or, without one, a unit) does not fit, in words: each extra
        cell short of it (a daily cap's wait dwarfs a minute's), with when it is
        full again, or else the per-minute limits short of it; [] when it fits."""
        extra = [
            f"{_WORDS[cell.name]} ({cell.name}={cell.limit:g}; full again in {cell.full_in:.0f}s)"
            for cell in self.extra
            if cell.available < max(1.0, 0.0 if cost is None else cell.spec.amount(cost))
        ]
        if extra:
            return extra
        short = []
        if self.requests_available < max(1.0, 0.0 if cost is None else cost.requests):
            short.append(f"{_WORDS['rpm_limit']} (rpm_limit={self.rpm_limit:g})")
        if self.tokens_available < max(1.0, 0.0 if cost is None else cost.tokens):
            short.append(f"{_WORDS['tpm_limit']} (tpm_limit={self.tpm_limit:g})")
        return short


_WORDS = {
    "rpm_limit": "requests per minute",
    "tpm_limit": "tokens per minute",
    "otpm_limit": "output tokens per minute",
    "rpd_limit": "the daily request cap",
    "tpd_limit": "the daily token cap",
}


@attrs.frozen(slots=True)
class CellSnapshot:
    """One extra cell of a :class:`BucketSnapshot`: what is left, and when it is full."""

    spec: CellSpec
    available: float
    capacity: float
    full_in: float

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def limit(self) -> float:
        return self.spec.limit

    @property
    def window(self) -> float:
        return self.spec.window


@attrs.frozen(slots=True)
class AdmissionMark:
    """How much a pair had admitted in all, right after one admission, and where
    that admission's charge began in its requests and tokens cells (see
    :meth:`BucketPair.start`).

    ``behind`` holds, per cell, how many seconds behind full the cell was when
    the charge was made (``inf``: unknown, the charge is never moved), and
    ``shifted`` the cell's `GcraCell.shifted` then.
    """

    requests: float = 0.0
    tokens: float = 0.0
    behind: tuple[float, float] = (math.inf, math.inf)
    shifted: tuple[float, float] = (0.0, 0.0)


class BucketPair:
    """The RPM and TPM cells of one (key, model), its extra cells, and its cooldown."""

    __slots__ = ("admitted", "cooldown_until", "extra", "requests", "spec", "tokens")

    def __init__(self, spec: LimitSpec) -> None:
        self.spec = spec
        self.requests = GcraCell(spec.rpm_limit, spec.rpm_capacity)
        self.tokens = GcraCell(spec.tpm_limit, spec.tpm_capacity)
        #: One cell per ``spec.extra``, in that order.
        self.extra = tuple(GcraCell(c.limit_per_minute, c.capacity) for c in spec.extra)
        self.cooldown_until = float("-inf")
        self.admitted = AdmissionMark()

    def reserve(self, now: float, cost: Cost, margin: float = 0.0) -> float:
        """Take ``cost`` from every cell, or none. Returns ``now`` or when it fits.

        ``margin`` seconds are added to every fit time, so that a caller whose
        arithmetic or clock differs slightly from the provider's stays behind it.
        """
        at = margin + max(
            self.cooldown_until,
            self.requests.fit_time(cost.requests),
            self.tokens.fit_time(cost.tokens),
        )
        if self.extra:  # inlined above: most pairs have none, and this is the hot path
            at = max(at, margin + self.fit_time(cost))
        if at > now:
            return at
        requests, tokens = self.requests, self.tokens
        behind = (max(0.0, requests.tat - now), max(0.0, tokens.tat - now))
        requests.charge(now, cost.requests)
        self.tokens.charge(now, cost.tokens, cost.over_tokens)
        if self.extra:
            for spec, cell in zip(self.spec.extra, self.extra, strict=True):
                cell.charge(now, spec.amount(cost), spec.tokens * cost.over_tokens)
        self.admitted = AdmissionMark(
            self.admitted.requests + cost.requests,
            self.admitted.tokens + cost.tokens,
            behind,
            (requests.shifted, tokens.shifted),
        )
        return now

    def fit_time(self, cost: Cost) -> float:
        """The earliest time ``cost`` fits in every cell, and the cooldown is over."""
        at = max(
            self.cooldown_until,
            self.requests.fit_time(cost.requests),
            self.tokens.fit_time(cost.tokens),
        )
        for spec, cell in zip(self.spec.extra, self.extra, strict=True):
            at = max(at, cell.fit_time(spec.amount(cost)))
        return at

    def learn(
        self,
        now: float,
        info: LimitReport,
        *,
        measured_at: float,
        charged_tokens: float,
        charged_requests: float,
        charged_output_tokens: float = 0.0,
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
        charged = Cost(charged_tokens, charged_requests, output_tokens=charged_output_tokens)
        for spec, cell in zip(self.spec.extra, self.extra, strict=True):
            report = spec.report(info)
            if report is not None:
                remaining, limit_per_minute = report
                cell.learn(
                    now,
                    remaining=remaining,
                    measured_at=measured_at,
                    capacity_floor=remaining + spec.amount(charged),
                    limit_per_minute=limit_per_minute,
                    window=spec.window,
                )

    def start(self, mark: AdmissionMark, delay: float) -> None:
        """The call whose admission left ``mark`` reached the provider ``delay``
        seconds after it was admitted.

        A full bucket refills until a call arrives, so the provider's charge for
        a call that finds its bucket full starts at its arrival, not at our
        admission. Where this call arrived later than our cell was behind full,
        our charge starts that much later too, and so does everything admitted
        after it (see `GcraCell.arrived_late`). May be told more than once, as
        the call's lateness becomes known: the later telling moves only the rest.
        """
        self.requests.arrived_late(mark.behind[0], mark.shifted[0], delay)
        self.tokens.arrived_late(mark.behind[1], mark.shifted[1], delay)

    def release(self, now: float, tokens: float) -> float:
        """Give back over-reserved tokens, as far as that is still safe."""
        for spec, cell in zip(self.spec.extra, self.extra, strict=True):
            if spec.tokens:  # a daily token cap
                cell.release(now, spec.tokens * tokens)
        return self.tokens.release(now, tokens)

    def adjust(
        self, now: float, requests: float, tokens: float, output_tokens: float = 0.0
    ) -> None:
        """Charge positive amounts, refund negative ones."""
        amounts: tuple[tuple[GcraCell, float], ...] = (
            (self.requests, requests),
            (self.tokens, tokens),
        )
        if self.extra:
            change = Cost(tokens, requests, output_tokens=output_tokens)
            cells = zip(self.spec.extra, self.extra, strict=True)
            amounts += tuple((cell, spec.amount(change)) for spec, cell in cells)
        for cell, amount in amounts:
            if amount > 0:
                cell.charge(now, amount)
            elif amount < 0:
                cell.refund(now, -amount)

    def cool_down(self, until: float) -> None:
        self.cooldown_until = max(self.cooldown_until, until)

    def full_at(self) -> float:
        """When the RPM and TPM cells are full again and the cooldown over, if
        nothing more is taken (extra cells do not count, as in :meth:`utilization`)."""
        return max(self.cooldown_until, self.requests.tat, self.tokens.tat)

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
            extra=tuple(
                CellSnapshot(
                    spec=spec,
                    available=cell.available(now),
                    capacity=cell.capacity,
                    full_in=max(0.0, cell.tat - now),
                )
                for spec, cell in zip(self.spec.extra, self.extra, strict=True)
            ),
        )
