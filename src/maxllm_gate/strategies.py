"""Routing strategies: in which order the dispatcher offers a job to keys.

A strategy only orders keys; it never reserves anything. The dispatcher offers
the job to each key in that order and the first whose buckets fit it wins, so
every strategy gets the same guarantee of no 429s and no waiting while some key
has room. Every strategy scores a key (lower is better), and
``client.scores()`` shows each score with the signals behind it.

=================  ===========================================================
``least_utilized``  the key with the most headroom left (the default)
``round_robin``     keys in turn
``latency_aware``   the fastest key by recent latency; unmeasured keys first
``balanced``        0.4 utilization + 0.3 latency + 0.2 errors + 0.1 recent use
``token_aware``     keys with room for this request's tokens, most room first
=================  ===========================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import anyio

from maxllm_gate.errors import ConfigError
from maxllm_gate.limits import BucketSnapshot

__all__ = ["STRATEGIES", "KeyView", "Strategy", "make_strategy"]

_FRESHNESS_HORIZON = 10.0  # seconds idle after which a key counts as fully rested


class _Stats(Protocol):
    @property
    def latency_ewma(self) -> float | None: ...

    @property
    def error_rate(self) -> float: ...

    @property
    def last_used(self) -> float: ...


class KeyView(Protocol):
    """What a strategy may read of a key actor."""

    @property
    def key_id(self) -> str: ...

    @property
    def stats(self) -> _Stats: ...

    def utilization(self, model: str, now: float) -> float: ...

    def snapshot(self, model: str) -> BucketSnapshot: ...


_K = TypeVar("_K", bound=KeyView)


class _Job(Protocol):
    model: str

    @property
    def cost(self) -> Any: ...


class _Context(NamedTuple):
    """What scoring one key needs to know of the others and of the job."""

    model: str
    now: float
    slowest: float
    tokens_needed: float
    keys: int
    offset: int


class Strategy:
    """Orders keys for a job by :meth:`score`, lowest first.

    **Indexed strategies.** Scoring every key for every job costs O(n) (about
    0.5 ms a decision at 1,000 keys). A strategy whose order can be kept in a
    heap sets ``indexed`` and defines :meth:`index_key`: a number that orders
    keys as :meth:`score` does, and that stays valid as time passes until the
    key's own state changes (an admission, a call's end). The dispatcher then
    keeps each model's keys in a heap, and one decision costs O(log n).
    """

    name = ""
    #: Whether :meth:`score` reads the context's ``slowest`` latency.
    uses_latency = False
    #: Whether the dispatcher may order keys by :meth:`index_key` instead of :meth:`rank`.
    indexed = False

    def index_key(self, key: Any, model: str, now: float, turn: float) -> float:
        """For an indexed strategy: the key's place in line (lower first), given
        ``turn``, the dispatcher's count of admissions when ``key`` last admitted
        a job (or its negative position among the keys before any)."""
        raise NotImplementedError

    def score(self, key: KeyView, position: int, ctx: _Context) -> float:
        raise NotImplementedError

    def rank(self, keys: Sequence[_K], job: _Job, now: float) -> list[_K]:
        """``keys`` in the order to offer them ``job``, best first."""
        if len(keys) <= 1:
            return list(keys)
        ctx = self._context(
            keys, job.model, float(job.cost.tokens), now, advance=True, latency=self.uses_latency
        )
        score = self.score
        scored = sorted([(score(key, i, ctx), i) for i, key in enumerate(keys)])
        return [keys[i] for _, i in scored]

    def _context(
        self,
        keys: Sequence[KeyView],
        model: str,
        tokens_needed: float,
        now: float,
        *,
        advance: bool,
        latency: bool = True,
    ) -> _Context:
        slowest = 1.0
        if latency:
            slowest = max([k.stats.latency_ewma or 0.0 for k in keys], default=0.0) or 1.0
        return _Context(
            model=model,
            now=now,
            slowest=slowest,
            tokens_needed=tokens_needed,
            keys=len(keys),
            offset=self._offset(model, len(keys), advance),
        )

    def _offset(self, model: str, count: int, advance: bool) -> int:
        return 0

    def scores(self, keys: Sequence[KeyView], model: str) -> dict[str, dict[str, float]]:
        """Each key's score and the signals behind it, for ``client.scores()``."""
        ctx = self._context(keys, model, 0.0, anyio.current_time(), advance=False)
        out = {}
        for i, key in enumerate(keys):
            snap = key.snapshot(model)
            latency = key.stats.latency_ewma or 0.0
            out[key.key_id] = {
                "total_score": self.score(key, i, ctx),
                "utilization": snap.utilization,
                "latency_avg_ms": latency * 1000.0,
                "latency_normalized": latency / ctx.slowest,
                "error_penalty": key.stats.error_rate,
                "freshness": _freshness(key, ctx.now),
                "tokens_available": snap.tokens_available,
            }
        return out


def _freshness(key: KeyView, now: float) -> float:
    return min(1.0, (now - key.stats.last_used) / _FRESHNESS_HORIZON)


class LeastUtilized(Strategy):
    name = "least_utilized"
    indexed = True

    def score(self, key: KeyView, position: int, ctx: _Context) -> float:
        return key.utilization(ctx.model, ctx.now)

    def index_key(self, key: Any, model: str, now: float, turn: float) -> float:
        # When the key will be fully rested. Among keys of one burst this orders them
        # as their utilization does, now and later; and it stays true when a key
        # learns a larger burst from its headers, which lowers its utilization but
        # moves no bucket. Rested keys tie (by position), as their scores do.
        full_at = float(key.full_at(model))
        return full_at if full_at > now else -math.inf


class RoundRobin(Strategy):
    name = "round_robin"
    indexed = True

    def index_key(self, key: Any, model: str, now: float, turn: float) -> float:
        return turn  # the key that admitted longest ago goes next: keys in turn

    def __init__(self) -> None:
        self._turns: dict[str, int] = {}

    def _offset(self, model: str, count: int, advance: bool) -> int:
        turn = self._turns.get(model, 0)
        if advance:
            self._turns[model] = turn + 1
        return turn % count

    def score(self, key: KeyView, position: int, ctx: _Context) -> float:
        return float((position - ctx.offset) % ctx.keys)


class LatencyAware(Strategy):
    name = "latency_aware"
    uses_latency = True

    def score(self, key: KeyView, position: int, ctx: _Context) -> float:
        latency = (key.stats.latency_ewma or 0.0) / ctx.slowest
        return latency + key.utilization(ctx.model, ctx.now) * 1e-3


class Balanced(Strategy):
    name = "balanced"
    uses_latency = True
    #: "recent_use" is 1 - freshness: it favours keys idle for a while (freshness 1).
    weights: Mapping[str, float] = {
        "utilization": 0.4,
        "latency": 0.3,
        "errors": 0.2,
        "recent_use": 0.1,
    }

    def score(self, key: KeyView, position: int, ctx: _Context) -> float:
        w = self.weights
        return (
            w["utilization"] * key.utilization(ctx.model, ctx.now)
            + w["latency"] * (key.stats.latency_ewma or 0.0) / ctx.slowest
            + w["errors"] * key.stats.error_rate
            + w["recent_use"] * (1.0 - _freshness(key, ctx.now))
        )


class TokenAware(Strategy):
    name = "token_aware"

    def score(self, key: KeyView, position: int, ctx: _Context) -> float:
        snap = key.snapshot(ctx.model)
        room = 0.0 if snap.cooldown_remaining > 0 else snap.tokens_available
        # Keys with room for the whole request first; within each group, most room first.
        fits = 0.0 if room >= ctx.tokens_needed else 1.0
        return fits - room / (room + 1.0 + ctx.tokens_needed)


STRATEGIES: Mapping[str, type[Strategy]] = {
    cls.name: cls for cls in (LeastUtilized, RoundRobin, LatencyAware, Balanced, TokenAware)
}


def make_strategy(name: str) -> Strategy:
    """A fresh strategy by its configured name (names are checked by the config)."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; expected one of {list(STRATEGIES)}"
        ) from None
