"""Routing strategies: in which order the dispatcher offers a job to keys.

A strategy only orders keys; it never reserves anything. The dispatcher offers
the job to each key in that order and the first whose buckets fit it wins, so
every strategy gets the same guarantee of no 429s and no waiting while some key
has room. Every strategy scores a key (lower is better) from the same
:class:`Signals`, and ``client.scores()`` shows those numbers.

=================  ===========================================================
``least_utilized``  the key with the most headroom left (the default)
``round_robin``     keys in turn
``latency_aware``   the fastest key by recent latency; unmeasured keys first
``balanced``        0.4 utilization + 0.3 latency + 0.2 errors + 0.1 staleness
``token_aware``     keys with room for this request's tokens, most room first
=================  ===========================================================
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio
import attrs

from maxllm_gate.errors import ConfigError
from maxllm_gate.limits import BucketSnapshot

__all__ = ["STRATEGIES", "KeyView", "Signals", "Strategy", "make_strategy"]

_FRESHNESS_HORIZON = 10.0  # seconds idle after which a key counts as fully rested


class _Stats(Protocol):
    latency_ewma: float | None
    error_rate: float
    last_used: float


class KeyView(Protocol):
    """What a strategy may read of a key actor."""

    key_id: str
    stats: _Stats

    def snapshot(self, model: str) -> BucketSnapshot: ...


class _Job(Protocol):
    model: str

    @property
    def cost(self) -> Any: ...


@attrs.frozen(slots=True)
class Signals:
    """The measurements every strategy scores a key by."""

    utilization: float
    latency_avg_ms: float
    latency_normalized: float
    error_penalty: float
    freshness: float
    tokens_available: float

    def as_dict(self, total_score: float) -> dict[str, float]:
        return {"total_score": total_score, **attrs.asdict(self)}


def _signals(keys: Sequence[KeyView], model: str) -> list[Signals]:
    now = anyio.current_time()
    latencies = [k.stats.latency_ewma or 0.0 for k in keys]
    slowest = max(latencies, default=0.0) or 1.0
    out = []
    for key, latency in zip(keys, latencies, strict=True):
        snap = key.snapshot(model)
        out.append(
            Signals(
                utilization=snap.utilization,
                latency_avg_ms=latency * 1000.0,
                latency_normalized=latency / slowest,
                error_penalty=key.stats.error_rate,
                freshness=min(1.0, (now - key.stats.last_used) / _FRESHNESS_HORIZON),
                tokens_available=0.0 if snap.cooldown_remaining > 0 else snap.tokens_available,
            )
        )
    return out


class Strategy:
    """Orders keys for a job by :meth:`score`, lowest first."""

    name = ""

    def score(self, signals: Signals, position: int, tokens_needed: float) -> float:
        raise NotImplementedError

    def rank(self, keys: Sequence[KeyView], job: _Job) -> list[KeyView]:
        if len(keys) <= 1:
            return list(keys)
        signals = _signals(keys, job.model)
        offset = self._offset(job.model, len(keys))
        tokens = float(job.cost.tokens)
        scored = sorted(
            range(len(keys)),
            key=lambda i: self.score(signals[i], (i - offset) % len(keys), tokens),
        )
        return [keys[i] for i in scored]

    def _offset(self, model: str, count: int) -> int:
        return 0

    def scores(self, keys: Sequence[KeyView], model: str) -> dict[str, dict[str, float]]:
        """Each key's score and the signals behind it, for ``client.scores()``."""
        signals = _signals(keys, model)
        return {
            key.key_id: sig.as_dict(self.score(sig, i, 0.0))
            for i, (key, sig) in enumerate(zip(keys, signals, strict=True))
        }


class LeastUtilized(Strategy):
    name = "least_utilized"

    def score(self, signals: Signals, position: int, tokens_needed: float) -> float:
        return signals.utilization


class RoundRobin(Strategy):
    name = "round_robin"

    def __init__(self) -> None:
        self._turns: dict[str, itertools.count[int]] = {}

    def _offset(self, model: str, count: int) -> int:
        turn = self._turns.setdefault(model, itertools.count())
        return next(turn) % count

    def score(self, signals: Signals, position: int, tokens_needed: float) -> float:
        return float(position)


class LatencyAware(Strategy):
    name = "latency_aware"

    def score(self, signals: Signals, position: int, tokens_needed: float) -> float:
        return signals.latency_normalized + signals.utilization * 1e-3


class Balanced(Strategy):
    name = "balanced"
    weights: Mapping[str, float] = {"utilization": 0.4, "latency": 0.3, "errors": 0.2, "stale": 0.1}

    def score(self, signals: Signals, position: int, tokens_needed: float) -> float:
        w = self.weights
        return (
            w["utilization"] * signals.utilization
            + w["latency"] * signals.latency_normalized
            + w["errors"] * signals.error_penalty
            + w["stale"] * (1.0 - signals.freshness)
        )


class TokenAware(Strategy):
    name = "token_aware"

    def score(self, signals: Signals, position: int, tokens_needed: float) -> float:
        room = signals.tokens_available
        # Keys with room for the whole request first; among each group, most room first.
        return (0.0 if room >= tokens_needed else 1.0) - room / (room + 1.0 + tokens_needed)


STRATEGIES: Mapping[str, type[Strategy]] = {
    cls.name: cls for cls in (LeastUtilized, RoundRobin, LatencyAware, Balanced, TokenAware)
}


def make_strategy(name: str) -> Strategy:
    """A fresh strategy by its configured name (names are checked by the config)."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; expected one of {list(STRATEGIES)}") from None

