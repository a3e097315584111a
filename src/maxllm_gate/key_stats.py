"""Latency and error statistics of one key: owned by its actor, shared through the state."""

from __future__ import annotations

import collections
import math

import attrs

__all__ = ["KeyStats", "SharedStats"]

_WINDOW = 1000  # latencies kept for percentiles
_ALPHA = 0.2  # weight of the newest sample in the moving averages


@attrs.frozen(slots=True)
class SharedStats:
    """One key's statistics over every process sharing it through Redis.

    Counters are sums over all processes; ``latency_ewma`` (seconds, ``None``
    before any answer) and ``error_rate`` are the mean of the processes heard
    from recently, ``processes`` of them. ``disabled`` is why one of them
    disabled the key, if one did.
    """

    calls: int
    successes: int
    errors: int
    rate_limited: int
    tokens: int
    latency_ewma: float | None
    error_rate: float
    processes: int
    #: Why a process disabled the key (its secret was refused), or None.
    disabled: str | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return attrs.asdict(self)


class KeyStats:
    """Counters, a window of recent latencies, and moving averages for routing.

    With shared state, :meth:`adopt` folds in what the other processes saw: the
    moving averages (which the strategies read) restart from the mean over all
    processes, and :attr:`shared` holds the totals.
    """

    __slots__ = (
        "_pushed",
        "calls",
        "error_rate",
        "errors",
        "last_used",
        "latencies",
        "latency_ewma",
        "rate_limited",
        "shared",
        "successes",
        "tokens",
    )

    def __init__(self) -> None:
        self.calls = 0
        self.successes = 0
        self.errors = 0
        self.rate_limited = 0
        self.tokens = 0
        self.latencies: collections.deque[float] = collections.deque(maxlen=_WINDOW)
        self.latency_ewma: float | None = None
        self.error_rate = 0.0
        self.last_used = -math.inf
        self.shared: SharedStats | None = None
        self._pushed: tuple[int, ...] = (0, 0, 0, 0, 0)

    def _counters(self) -> tuple[int, ...]:
        return (self.calls, self.successes, self.errors, self.rate_limited, self.tokens)

    def unpushed(self) -> tuple[int, ...]:
        """The counters' growth since the last :meth:`mark_pushed`."""
        return tuple(
            now - before for now, before in zip(self._counters(), self._pushed, strict=True)
        )

    def mark_pushed(self, deltas: tuple[int, ...]) -> None:
        """``deltas`` (from :meth:`unpushed`) reached the shared totals."""
        self._pushed = tuple(before + d for before, d in zip(self._pushed, deltas, strict=True))

    def adopt(self, shared: SharedStats) -> None:
        """Take the view of every process sharing this key (see the class docs)."""
        self.shared = shared
        if shared.latency_ewma is not None:
            self.latency_ewma = shared.latency_ewma
        self.error_rate = shared.error_rate

    def record_start(self, now: float) -> None:
        self.calls += 1
        self.last_used = now

    def record_success(self, latency: float, tokens: int) -> None:
        self.successes += 1
        self.tokens += tokens
        self.latencies.append(latency)
        ewma = self.latency_ewma
        self.latency_ewma = latency if ewma is None else ewma + _ALPHA * (latency - ewma)
        self.error_rate -= _ALPHA * self.error_rate

    def record_error(self, *, rate_limited: bool = False) -> None:
        self.errors += 1
        if rate_limited:
            self.rate_limited += 1
        self.error_rate += _ALPHA * (1.0 - self.error_rate)

    def percentiles(self) -> dict[str, float]:
        """avg, p50, p95 and p99 of the recent latencies, in milliseconds."""
        if not self.latencies:
            return {"avg_ms": 0.0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "samples": 0}
        ordered = sorted(self.latencies)
        last = len(ordered) - 1

        def pick(q: float) -> float:
            return ordered[min(last, math.ceil(q * len(ordered)) - 1)] * 1000.0

        return {
            "avg_ms": sum(ordered) / len(ordered) * 1000.0,
            "p50_ms": pick(0.50),
            "p95_ms": pick(0.95),
            "p99_ms": pick(0.99),
            "samples": len(ordered),
        }
