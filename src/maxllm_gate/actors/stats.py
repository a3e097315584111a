"""Latency and error statistics of one key, owned by its actor."""

from __future__ import annotations

import collections
import math

__all__ = ["KeyStats"]

_WINDOW = 1000  # latencies kept for percentiles
_ALPHA = 0.2  # weight of the newest sample in the moving averages


class KeyStats:
    """Counters, a window of recent latencies, and moving averages for routing."""

    __slots__ = (
        "calls",
        "error_rate",
        "errors",
        "last_used",
        "latencies",
        "latency_ewma",
        "rate_limited",
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
