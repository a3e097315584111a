"""Limit state in Redis, shared by every process that uses the same keys.

Each operation of :class:`~maxllm_gate.state.StateBackend` is one Lua script
(``state/lua/*.lua``), run atomically on the server, on the server's clock
(``TIME``), so processes whose clocks disagree still agree on every bucket.
The scripts port the arithmetic of :mod:`maxllm_gate.limits` line for line;
``_cells.lua`` holds it and is prepended to each operation's script.

Layout: one hash per (key id, model), ``<prefix>:{<key id>}:<model>``. The hash
tag keeps every key of one API key in one Redis Cluster slot, and each script
touches one hash only. Only key ids are stored, never an API key. Every write
refreshes the hash's TTL (``ttl`` seconds, longer while it still holds debt or
a cooldown); an idle pair simply expires, which is the same as a full bucket,
and forgets what it learned from headers until the next response teaches it again.

Redis Cluster: a URL naming any node of one works. The first
:meth:`RedisState.check` asks ``INFO cluster`` and then uses coredis'
``RedisCluster``, which runs each script on the node holding its key's slot.

Limits: each process passes the :class:`~maxllm_gate.limits.LimitSpec` it
registered with every call, so each uses its own configured limits. What the
provider's headers teach is stored in the hash and wins only the conservative
way: the slower rate; a learned capacity (proven by the headers) over the
configured one.

Statistics: ``<prefix>:{<key id>}:stats`` holds every process's latency and
error figures for a key (``stats.lua``), reported every few seconds by
:class:`~maxllm_gate.state.hybrid.HybridRateLimiter`, not per request.

Round trips: one script call per operation. A request costs one ``reserve``
when it is admitted and one ``settle`` when it ends (the report of its headers,
its refunds and any cooldown, together), plus a ``started`` only when the
call left over a millisecond later than its bucket was behind full.
A reservation the local copy already refuses costs none, and so does a
settlement with nothing to change. :attr:`RedisState.calls` counts them.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from importlib import resources
from types import TracebackType
from typing import Any

import anyio
import attrs

try:
    import coredis
    import coredis.exceptions
    import coredis.retry
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "the Redis state backend needs coredis: pip install 'maxllm_gate[redis]'"
    ) from exc

from maxllm_gate.key_stats import KeyStats, SharedStats
from maxllm_gate.limits import (
    AdmissionMark,
    BucketPair,
    BucketSnapshot,
    CellSpec,
    Cost,
    LimitReport,
    LimitSpec,
)
from maxllm_gate.state.base import Adjust, CoolDown, Correction, Learn, Release
from maxllm_gate.state.memory import SAFETY_MARGIN

__all__ = ["REDIS_ERRORS", "RedisState"]

#: What a call raises when Redis cannot be reached, stops answering, or refuses
#: to serve it (a read-only replica after a failover, out of memory, ...).
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    coredis.exceptions.RedisError,
    TimeoutError,
    OSError,
)

_OPERATIONS = ("reserve", "settle", "started", "sync", "stats", "peek")
# A call that leaves this soon after its bucket's earlier charges leaves "at once":
# moving its charge would cost a round trip to move it by less than the network's
# jitter.
_START_THRESHOLD = 0.001
# Larger than any real wait, small enough to stay an exact float in Lua.
_FAR = 1e12

_Pair = tuple[str, str]


# The preludes of each script: the pair's cells, the statistics' function, or both.
_PRELUDES = {"stats": ("_stats",), "settle": ("_cells", "_stats")}


def _script_source(operation: str) -> str:
    """Its preludes (``_cells.lua`` unless told otherwise), then ``<operation>.lua``."""
    folder = resources.files("maxllm_gate.state") / "lua"
    parts = (*_PRELUDES.get(operation, ("_cells",)), operation)
    return "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in parts)


def _new_client(url: str, *, cluster: bool) -> coredis.Redis[str] | coredis.RedisCluster[str]:
    """A client for the server, or the Redis Cluster, at ``url``."""
    # Never retried here: a script whose reply was lost may have run, and running a
    # refund twice is not safe. The caller decides (see HybridRateLimiter); the pool
    # makes a new connection on the next call.
    options: dict[str, Any] = {
        "decode_responses": True,
        "connect_timeout": 1.0,
        "stream_timeout": 5.0,
        "retry_policy": coredis.retry.NoRetryPolicy(),
    }
    if cluster:
        with warnings.catch_warnings():  # coredis 6.9 warns about its own from_url
            warnings.simplefilter("ignore", DeprecationWarning)
            return coredis.RedisCluster.from_url(url, **options)
    return coredis.Redis.from_url(url, **options)


def _arg(value: float) -> str:
    """A number as the scripts read it: exact (``repr``), finite."""
    return repr(min(max(float(value), -_FAR), _FAR))


class RedisState:
    """Bucket pairs in Redis, shared by every process using the same ``prefix``.

    Args:
      redis_url: ``redis://[[user]:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        It may name any node of a Redis Cluster: the first :meth:`check` asks the
        server (``INFO cluster``) and, on a Cluster, uses coredis'
        ``RedisCluster`` from then on, which finds the other nodes itself.
      margin: seconds after the exact fit time at which a request is admitted
        (see :data:`maxllm_gate.state.memory.SAFETY_MARGIN`).
      prefix: the first part of every Redis key.
      ttl: seconds an idle pair is kept (at least; see the module docs).
      cold_start: seconds of refill a pair that Redis does not hold yet (new,
        expired, or lost in a Redis restart or flush) starts without, at most its
        whole capacity. The calls spending its first burst leave on cold
        connections and reach the provider late, bunched with the calls admitted
        right after them; after a restart it also stands for the calls in flight.
        It costs that much refill, once per pair.
      jitter: waits are lengthened by a random ``[0, jitter × min(wait, 1 s))``:
        up to 1% of the wait and never more than 10 ms with the default, so
        processes told to come back at the same instant do not all come back
        at once. Only ever later, never earlier, than the exact fit time.
      client: a coredis client (``Redis`` or ``RedisCluster``) to use instead of
        one built from ``redis_url``; nothing is detected then. Its owner enters
        and exits it (``async with client``); this class then neither opens nor
        closes it.

    Use it as ``async with RedisState(url) as state:``, or call :meth:`connect`
    and later :meth:`aclose` **from the same task**: the connection pool runs
    its connections in a task group opened by :meth:`connect` (so, as with any
    task group, several instances close in the reverse order they opened).
    On a Cluster the first successful :meth:`check` opens the cluster's pool the
    same way, so it too belongs to that task. Other tasks may call every other
    method meanwhile.

    The synchronous methods (:meth:`snapshot`, :meth:`utilization`, :meth:`mark`)
    answer from a local copy of each pair, refreshed from the reply of every
    script this process runs on it. It misses what other processes did since,
    so it is as stale as this process's last call on that pair: fine for
    choosing a key (the reservation itself is always exact, on the server).
    """

    is_distributed = True

    def __init__(
        self,
        redis_url: str,
        *,
        margin: float = SAFETY_MARGIN,
        prefix: str = "maxllm_gate",
        ttl: float = 3600.0,
        cold_start: float = 0.5,
        jitter: float = 0.01,
        client: coredis.Redis[str] | coredis.RedisCluster[str] | None = None,
    ) -> None:
        if ttl <= 0 or jitter < 0 or margin < 0 or cold_start < 0:
            raise ValueError("ttl must be positive; jitter, margin and cold_start not negative")
        self.margin = margin
        self.cold_start = cold_start
        self.prefix = prefix
        self.ttl = ttl
        self.jitter = jitter
        self._owns_client = client is None
        self._url = redis_url
        #: Whether Redis is a Redis Cluster: known from a ``client`` given, else found
        #: out by the first :meth:`check` that reaches it (None until then).
        self.is_cluster = None if client is None else isinstance(client, coredis.RedisCluster)
        self._client: coredis.Redis[str] | coredis.RedisCluster[str] = client or _new_client(
            redis_url, cluster=False
        )
        self._single = self._client  # the client check() asks whether it is a Cluster node
        self._scripts = {op: self._client.register_script(_script_source(op)) for op in _OPERATIONS}
        #: This process's id in shared statistics (random: never derived from a key).
        self.process_id = os.urandom(4).hex()
        self._specs: dict[_Pair, LimitSpec] = {}
        self._cache: dict[_Pair, BucketPair] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        #: Script calls made, by operation (one Redis round trip each).
        self.calls: collections.Counter[str] = collections.Counter()
        #: Reservations refused from the local copy, without a round trip.
        self.answered_locally = 0
        #: When Redis last answered (``anyio.current_time()``).
        self.last_reply = -math.inf

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self, *, verify: bool = True) -> None:
        """Open the connection pool, then (with ``verify``) :meth:`check` that Redis answers.

        With ``verify=False`` nothing goes over the network: connections are
        made on first use, and a pool opened while Redis is down works as soon
        as Redis is back; :meth:`check` then finds out whether it is a Cluster
        (call it before any operation). Does nothing if already connected.

        Raises:
          coredis.exceptions.RedisError, TimeoutError, OSError: Redis cannot be
            reached (see :data:`REDIS_ERRORS`); the pool is closed again.
        """
        if self._stack is not None:
            return
        stack = contextlib.AsyncExitStack()
        if self._owns_client:
            await stack.enter_async_context(self._client)
        self._stack = stack
        if verify:
            try:
                await self.check()
            except BaseException:
                await self.aclose()
                raise

    async def check(self) -> None:
        """One ``PING``, then load the scripts (a restarted server has none).

        The first time it reaches Redis (on a URL, not a given client) it also
        asks ``INFO cluster``; on a Redis Cluster it then opens a cluster client
        (from the task that called :meth:`connect`), and from then on every
        script runs on the node that holds its key's slot. ``PING`` and the
        script loads go to every primary: Redis answers only if they all do.

        Raises:
          coredis.exceptions.RedisError, TimeoutError, OSError: Redis cannot be reached.
          RuntimeError: not connected.
        """
        if self._stack is None:
            raise RuntimeError("RedisState is not connected: call connect() first")
        await self.ping()
        if self.is_cluster is None:
            await self._detect_cluster(self._stack)
        for script in self._scripts.values():
            await self._client.script_load(script.script)

    async def _detect_cluster(self, stack: contextlib.AsyncExitStack) -> None:
        """Ask the server (``INFO cluster``) whether it is a Redis Cluster node; if it
        is, open a cluster client from the same URL and run every script through it."""
        try:
            info = await self._client.info("cluster")
        except coredis.exceptions.ResponseError:  # INFO refused (an ACL): a single server
            info = {}
        if str(info.get("cluster_enabled", 0)) != "1":
            self.is_cluster = False
            return
        cluster = _new_client(self._url, cluster=True)
        await stack.enter_async_context(cluster)  # discovers the nodes and their slots
        self._use(cluster)
        self.is_cluster = True
        self.last_reply = anyio.current_time()

    def _use(self, client: coredis.Redis[str] | coredis.RedisCluster[str]) -> None:
        """Run every command, and bind every script, through ``client``."""
        self._client = client
        self._scripts = {
            name: client.register_script(s.script) for name, s in self._scripts.items()
        }

    async def ping(self) -> None:
        """One ``PING``.

        Raises:
          coredis.exceptions.RedisError, TimeoutError, OSError: Redis cannot be reached.
        """
        await self._client.ping()
        self.last_reply = anyio.current_time()

    async def aclose(self) -> None:
        """Close the connection pool (if this object opened it). Safe to call twice."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        if self._owns_client and self.is_cluster:  # the next connect() asks again
            self._use(self._single)
            self.is_cluster = None

    async def __aenter__(self) -> RedisState:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def redis_key(self, key_id: str, model: str) -> str:
        """The hash holding ``(key_id, model)``; hash-tagged by key id."""
        return f"{self.prefix}:{{{key_id}}}:{model}"

    # -- StateBackend --------------------------------------------------------------------

    def register(self, key_id: str, model: str, spec: LimitSpec) -> None:
        """Use ``spec`` for ``(key_id, model)`` in this process; Redis is not touched."""
        if self._specs.get((key_id, model)) != spec:
            self._specs[key_id, model] = spec
            self._cache[key_id, model] = BucketPair(spec)

    def unregister(self, key_id: str) -> None:
        """Forget ``key_id`` here; its shared state stays in Redis for other processes."""
        for pair in [p for p in self._specs if p[0] == key_id]:
            del self._specs[pair], self._cache[pair]

    async def reserve(self, key_id: str, model: str, cost: Cost) -> float:
        """Take ``cost`` from both buckets atomically, or nothing; see
        :meth:`StateBackend.reserve`.

        One round trip, unless the local copy already shows that ``cost`` does
        not fit yet: a bucket only fills faster than that copy says when another
        process gives tokens back or learns a larger capacity, so the wait it
        gives is exact or a little long, never too short; the server decides
        every admission.

        Raises:
          KeyError: ``(key_id, model)`` was never registered.
          coredis.exceptions.RedisError, TimeoutError, OSError: Redis is
            unreachable or failed (see :data:`REDIS_ERRORS`).
        """
        known = self._cache[key_id, model]
        now = anyio.current_time()
        at = self.margin + known.fit_time(cost)
        if at > now:  # our last reply already says no: no round trip to hear it again
            self.answered_locally += 1
            return self._lengthen(at - now)
        args = (cost.requests, cost.tokens, cost.over_tokens, self.margin, cost.output_tokens)
        reply = await self._call("reserve", key_id, model, args)
        return 0.0 if reply[0] == 1 else self._lengthen(float(reply[1]))

    def _lengthen(self, wait: float) -> float:
        """A wait, never too short for the clock to move, plus this process's jitter."""
        wait = max(wait, 1e-6)
        return wait + random.uniform(0.0, self.jitter * min(wait, 1.0))

    async def started(
        self,
        key_id: str,
        model: str,
        mark: AdmissionMark,
        admitted_at: float,
        at: float | None = None,
    ) -> None:
        """Move a charge to when its call reached the provider; see
        :meth:`StateBackend.started`.

        A round trip only when the call left more than a millisecond later than
        its cells were behind full when it was admitted (a call sent at once
        does not pay a round trip to move the bucket by less than the network's
        jitter, which the margin covers). ``admitted_at`` precedes the server's
        admission by up to a round trip: the move errs that much long.
        """
        late = (anyio.current_time() if at is None else at) - admitted_at
        if late - min(mark.behind) <= _START_THRESHOLD or (key_id, model) not in self._specs:
            return
        args = (mark.behind[0], mark.shifted[0], mark.behind[1], mark.shifted[1], late)
        await self._call("started", key_id, model, args)

    async def adjust(self, key_id: str, model: str, requests: float, tokens: float) -> None:
        """See :meth:`StateBackend.adjust`. Like every operation below, one round
        trip (none when there is nothing to do, or the pair is not registered),
        and raises what :meth:`reserve` raises when Redis fails."""
        await self.settle(key_id, model, [Adjust(requests, tokens)])

    async def release(self, key_id: str, model: str, tokens: float) -> None:
        await self.settle(key_id, model, [Release(tokens)])

    def mark(self, key_id: str, model: str) -> AdmissionMark:
        return self._cache[key_id, model].admitted

    async def learn(
        self,
        key_id: str,
        model: str,
        info: LimitReport,
        *,
        since: float,
        charged_tokens: float,
        charged_requests: float,
    ) -> None:
        await self.settle(key_id, model, [Learn(info, since, charged_tokens, charged_requests)])

    async def cool_down(self, key_id: str, model: str, seconds: float) -> None:
        await self.settle(key_id, model, [CoolDown(seconds)])

    async def settle(self, key_id: str, model: str, corrections: Sequence[Correction]) -> None:
        """See :meth:`StateBackend.settle`: one script (``settle.lua``), one round trip."""
        await self.settle_sharing(key_id, model, corrections, None)

    async def settle_sharing(
        self,
        key_id: str,
        model: str,
        corrections: Sequence[Correction],
        share: StatsShare | None,
    ) -> SharedStats | None:
        """:meth:`settle`, and with ``share`` what :meth:`share_stats` does, in the same
        script: a settlement carries the key's statistics when they are due, instead
        of a round trip of their own. Returns share_stats' answer (None without
        ``share``, or when the pair is not registered here)."""
        if (key_id, model) not in self._specs:
            return None
        spec = self._specs[key_id, model]
        args = [part for correction in corrections for part in _encoded(correction, spec)]
        stats_args = self._stats_args(share) if share is not None else []
        if not (args or stats_args):
            return None
        if stats_args:
            args += ["stats", *stats_args]
        reply = await self._call("settle", key_id, model, args)
        if share is None:
            return None
        return _adopt(share, stats_args, reply[_REPLY_LENGTH + 3 * len(spec.extra) :])

    async def merge(self, key_id: str, model: str, pair: BucketPair) -> None:
        """Merge ``pair`` (on this process's clock) into the shared state of ``(key_id, model)``.

        Each bucket keeps the larger debt of the two and the cooldown its later
        end: how a process that admitted calls on its own while Redis was away
        hands them over (see ``sync.lua``). One round trip.
        """
        if (key_id, model) not in self._specs:
            return
        now = anyio.current_time()
        debts = (
            pair.requests.tat - now,
            pair.tokens.tat - now,
            pair.cooldown_until - now,
            *(cell.tat - now for cell in pair.extra),
        )
        await self._call("sync", key_id, model, debts)

    async def share_stats(self, key_id: str, share: StatsShare) -> SharedStats:
        """Add ``share.stats``' counters since its last report to the totals every
        process sharing ``key_id`` sees, and :meth:`KeyStats.adopt` what they all saw.

        Processes silent for ``share.stale`` seconds no longer count in the
        averages. ``share.disabled`` (why this process disabled the key) is recorded
        under ``share.fingerprint`` (of the key's secret, never the secret), and the
        answer's ``disabled`` says whether any process did. One round trip.

        Raises:
          coredis.exceptions.RedisError, TimeoutError, OSError: Redis is unreachable.
        """
        args = self._stats_args(share)
        reply = await self._eval("stats", [self._stats_key(key_id)], args)
        return _adopt(share, args, reply)

    def _stats_key(self, key_id: str) -> str:
        return f"{self.prefix}:{{{key_id}}}:stats"

    def _stats_args(self, share: StatsShare) -> list[str]:
        stats = share.stats
        latency = "" if stats.latency_ewma is None else _arg(stats.latency_ewma)
        args = [self.process_id, _arg(self.ttl), _arg(share.stale), *map(str, stats.unpushed())]
        return [*args, latency, _arg(stats.error_rate), share.fingerprint, share.disabled or ""]

    async def refresh(self) -> None:
        """Re-read every registered pair from Redis into the local copy, writing
        nothing: the synchronous methods then answer with what every process did,
        as of now. One round trip per pair.

        Raises:
          coredis.exceptions.RedisError, TimeoutError, OSError: Redis is unreachable.
        """
        for key_id, model in list(self._specs):
            if (key_id, model) in self._specs:  # not unregistered meanwhile
                await self._call("peek", key_id, model, ())

    def utilization(self, key_id: str, model: str, now: float) -> float:
        """From the local copy: as of this process's last call on the pair."""
        return self._cache[key_id, model].utilization(now)

    def full_at(self, key_id: str, model: str) -> float:
        """From the local copy: as of this process's last call on the pair."""
        return self._cache[key_id, model].full_at()

    def snapshot(self, key_id: str, model: str) -> BucketSnapshot:
        """From the local copy: as of this process's last call on the pair."""
        return self._cache[key_id, model].snapshot(anyio.current_time())

    def cached_pairs(self) -> Iterator[tuple[str, str, BucketPair]]:
        """``(key_id, model, pair)``: the local copy of every registered pair, on
        this process's clock (``anyio.current_time()``)."""
        for (key_id, model), pair in self._cache.items():
            yield key_id, model, pair

    # -- one script call -------------------------------------------------------------------

    async def _call(
        self, operation: str, key_id: str, model: str, args: Sequence[float | str]
    ) -> list[Any]:
        spec = self._specs[key_id, model]
        limits = (
            spec.rpm_limit,
            spec.tpm_limit,
            spec.rpm_capacity,
            spec.tpm_capacity,
            self.ttl,
            self.cold_start,
            len(spec.extra),
            *(value for cell in spec.extra for value in _cell_args(cell)),
        )
        argv = [a if isinstance(a, str) else _arg(a) for a in (*limits, *args)]
        keys = [self.redis_key(key_id, model), self._stats_key(key_id)]  # one slot: {key_id}
        reply = await self._eval(operation, keys, argv)
        self._remember(key_id, model, operation, reply)
        return reply

    async def _eval(self, operation: str, keys: list[str], argv: Sequence[str]) -> list[Any]:
        """Run one script on ``keys`` (of one slot): one round trip, counted in :attr:`calls`."""
        if self._stack is None:
            raise RuntimeError("RedisState is not connected: call connect() first")
        self.calls[operation] += 1
        reply: object = await self._scripts[operation](keys=keys, args=argv)
        self.last_reply = anyio.current_time()
        assert isinstance(reply, list), reply
        return reply

    def _remember(self, key_id: str, model: str, operation: str, reply: list[Any]) -> None:
        """Refresh the local copy of the pair from a script's reply."""
        pair = self._cache.get((key_id, model))
        if pair is None:  # unregistered while the script ran
            return
        now = anyio.current_time()
        values = [float(v) for v in reply[2:11]]
        r_tat, r_interval, r_capacity, t_tat, t_interval, t_capacity, cool, adm_r, adm_t = values
        cells = [
            (pair.requests, r_tat, r_interval, r_capacity),
            (pair.tokens, t_tat, t_interval, t_capacity),
        ]
        for k, cell in enumerate(pair.extra):
            at = _REPLY_LENGTH + 3 * k
            tat, interval, capacity = (float(v) for v in reply[at : at + 3])
            cells.append((cell, tat, interval, capacity))
        for cell, tat, interval, capacity in cells:
            cell.tat, cell.interval, cell.capacity = now + tat, interval, capacity
        pair.cooldown_until = now + cool
        if operation == "reserve" and reply[0] == 1:  # a new mark for each admission
            behind_r, behind_t, shifted_r, shifted_t = (float(v) for v in reply[12:16])
            pair.admitted = AdmissionMark(
                adm_r, adm_t, (behind_r, behind_t), (shifted_r, shifted_t)
            )
        elif (adm_r, adm_t) != (pair.admitted.requests, pair.admitted.tokens):
            pair.admitted = AdmissionMark(adm_r, adm_t)  # another process admitted


@attrs.frozen(eq=False)
class StatsShare:
    """One key's statistics to add to what every process sharing it sees (see
    :meth:`RedisState.share_stats`): processes silent for ``stale`` seconds drop
    out of the averages; ``disabled`` is why this process disabled the key,
    recorded under ``fingerprint`` (of its secret)."""

    stats: KeyStats
    stale: float
    fingerprint: str
    disabled: str | None = None


# The length of every pair script's reply (``reply()`` in _cells.lua), before the
# 3 values of each extra cell.
_REPLY_LENGTH = 16


def _cell_args(cell: CellSpec) -> tuple[float, ...]:
    """An extra cell as ``_cells.lua`` reads it from ARGV."""
    weights = (cell.requests, cell.tokens, cell.output_tokens)
    return (cell.limit_per_minute, cell.capacity, *weights, cell.window)


def _adopt(share: StatsShare, args: list[str], reply: list[Any]) -> SharedStats:
    """Mark the counters sent in ``args`` pushed, and adopt ``reply``: share_stats' answer."""
    share.stats.mark_pushed(tuple(int(v) for v in args[3:8]))
    calls, successes, errors, rate_limited, tokens = (int(v) for v in reply[:5])
    shared = SharedStats(
        calls=calls,
        successes=successes,
        errors=errors,
        rate_limited=rate_limited,
        tokens=tokens,
        latency_ewma=float(reply[5]) if reply[5] != "" else None,
        error_rate=float(reply[6]),
        processes=int(reply[7]),
        disabled=reply[8] or None,
    )
    share.stats.adopt(shared)
    return shared


def _encoded(correction: Correction, spec: LimitSpec) -> tuple[str, ...]:
    """``correction`` as ``settle.lua`` reads it; () when it would change nothing."""
    if isinstance(correction, Release):
        return ("release", _arg(correction.tokens)) if correction.tokens > 0 else ()
    if isinstance(correction, Adjust):
        amounts = (correction.requests, correction.tokens, correction.output_tokens)
        return ("adjust", *map(_arg, amounts)) if any(amounts) else ()
    if isinstance(correction, CoolDown):
        return ("cool_down", _arg(correction.seconds))
    info = correction.info
    tokens = _report(info.remaining_tokens, correction.charged_tokens, info.limit_tokens)
    requests = _report(
        None if info.requests_per_day else info.remaining_requests,
        correction.charged_requests,
        info.limit_requests,
    )
    charged = Cost(
        correction.charged_tokens,
        correction.charged_requests,
        output_tokens=correction.charged_output_tokens,
    )
    extra: list[str] = []
    for cell in spec.extra:
        report = cell.report(info)
        if report is None:
            extra += _report(None, 0.0, None)
        else:
            remaining, limit_per_minute = report
            extra += _report(remaining, cell.amount(charged), limit_per_minute)
    if tokens[0] == "0" and requests[0] == "0" and "1" not in extra[::4]:
        return ()
    return ("learn", _arg(correction.since), *tokens, *requests, *extra)


def _report(remaining: float | None, charged: float, limit: float | None) -> tuple[str, ...]:
    """One dimension of a header report, as ``settle.lua`` reads it."""
    if remaining is None:
        return ("0", "0", "0", "0")
    return ("1", _arg(remaining), _arg(remaining + charged), _arg(limit or 0.0))
