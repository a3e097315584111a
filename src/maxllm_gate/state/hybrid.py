"""Redis-shared limits that survive Redis going away: :class:`HybridRateLimiter`.

It is a :class:`~maxllm_gate.state.StateBackend` that uses a
:class:`~maxllm_gate.state.redis.RedisState` while Redis answers and a
:class:`~maxllm_gate.state.MemoryState` while it does not, switching back once
it answers again.

While on memory, each process enforces the limits alone, so N processes may
admit up to N times the limit between them: the price of staying up. At the
switch the memory buckets start from the last state this process saw in Redis,
not from full. Back on Redis, each process first merges its memory buckets into
the shared ones (each keeps the larger debt: nothing charged before the outage
is counted twice, and what the process admitted alone is counted), so the calls
still in flight stay charged even when Redis restarted empty.

Latency and error statistics are shared too, every ``stats_interval`` seconds
(see :meth:`maxllm_gate.key_stats.KeyStats.adopt`), so every process routes
on what all of them see; so is a key's disabling (its secret was refused), which
every process then follows within that time. They ride on the script that
settles a call when one is due, and take a round trip of their own only for a
key that settled nothing in that time.

A request is settled (refunds, header sync) wherever the state is at that
moment; both sides hold its charge, so nothing is given back that was not taken.
While on Redis, a heartbeat (``PING`` every ``heartbeat_interval`` seconds
without other traffic) notices an outage even when no request is running, so
:attr:`~HybridRateLimiter.is_distributed` is right within about that long.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import anyio.abc

from maxllm_gate._logging import get_logger
from maxllm_gate.config import key_fingerprint, masked_url
from maxllm_gate.errors import GateError
from maxllm_gate.key_stats import KeyStats, SharedStats
from maxllm_gate.limits import AdmissionMark, BucketSnapshot, Cost, LimitReport, LimitSpec
from maxllm_gate.state.base import Correction, StateBackend
from maxllm_gate.state.memory import MemoryState
from maxllm_gate.state.redis import REDIS_ERRORS, RedisState, StatsShare

if TYPE_CHECKING:
    from maxllm_gate.config import KeyConfig

__all__ = ["HybridRateLimiter"]

log = get_logger("maxllm_gate.redis")

T = TypeVar("T")

_MAX_RECONNECT_INTERVAL = 5.0


class SharedKey(Protocol):
    """What :class:`HybridRateLimiter` shares of a key: a key actor."""

    key: KeyConfig
    stats: KeyStats
    disabled: str | None

    def disable(self, reason: str) -> None: ...


def _follow(key: SharedKey, shared: SharedStats) -> None:
    """Disable ``key`` here too if another process disabled it."""
    if shared.disabled is not None and key.disabled is None:
        key.disable(f"disabled by another process: {shared.disabled}")


class HybridRateLimiter:
    """Limits shared through Redis, falling back to process memory when Redis is down.

    Args:
      redis_url: where Redis is (``redis://host:port/db``), or any node of a
        Redis Cluster (detected on connecting; see :class:`RedisState`).
      fallback_to_memory: when Redis cannot be reached, use per-process limits
        (one warning is logged per switch). With False, :meth:`initialize` and
        every operation raise :class:`~maxllm_gate.errors.GateError` instead.
      reconnect_interval: seconds between attempts to reach Redis again
        (doubling, up to 5 s), while :meth:`run` runs.
      heartbeat_interval: while on Redis, seconds of silence after which
        :meth:`run` checks that Redis still answers.
      stats_interval: while on Redis, :meth:`run` shares the latency and error
        statistics of :attr:`stats_source` this often (one round trip per key).
      **redis_state_kwargs: passed to :class:`~maxllm_gate.state.redis.RedisState`
        (``margin``, ``prefix``, ``ttl``, ``jitter``, ``client``).

    It needs an owner, in one of three ways:

    * ``async with HybridRateLimiter(url) as limiter:`` runs :meth:`run` in a
      task group of its own, nested in the caller's task (structured);
    * ``await task_group.start(limiter.run)`` in a task group the caller owns
      (a supervisor): the limiter is ready when ``start`` returns, and stops
      (closing its connections) when that task group is cancelled;
    * ``await limiter.initialize()`` and later ``await limiter.aclose()`` from
      the same task: no background task, so after a switch to memory it
      stays on memory.

    Every async operation raises :class:`~maxllm_gate.errors.GateError` when
    the limiter is not initialized, or when Redis fails and
    ``fallback_to_memory`` is False (Redis's own exceptions never escape).
    """

    def __init__(
        self,
        redis_url: str,
        fallback_to_memory: bool = True,
        *,
        reconnect_interval: float = 1.0,
        heartbeat_interval: float = 1.0,
        stats_interval: float = 2.0,
        **redis_state_kwargs: Any,
    ) -> None:
        self.redis = RedisState(redis_url, **redis_state_kwargs)
        self.memory = MemoryState(margin=self.redis.margin)
        self.fallback_to_memory = fallback_to_memory
        self.reconnect_interval = reconnect_interval
        self.heartbeat_interval = heartbeat_interval
        self.stats_interval = stats_interval
        #: Returns the keys whose statistics and disabling to share, by key id (the
        #: client sets it to its key actors); None: share none.
        self.stats_source: Callable[[], Mapping[str, SharedKey]] | None = None
        self.url = masked_url(redis_url)  # for messages and logs
        self._initialized = False
        self._using_redis = False
        self._reconnecting = False
        self._lost: anyio.Event | None = None  # set when Redis is lost
        self._stats_due: dict[str, float] = {}  # key id -> when its statistics are due
        self._exit_stack: contextlib.AsyncExitStack | None = None

    @property
    def is_distributed(self) -> bool:
        """True while the limits are shared through Redis."""
        return self._using_redis

    # -- lifecycle ---------------------------------------------------------------------

    async def initialize(self) -> None:
        """Connect to Redis, or fall back to memory. Does nothing the second time.

        The connection pool belongs to the calling task: close it with
        :meth:`aclose` from that task (:meth:`run` does both).

        Raises:
          GateError: Redis cannot be reached and ``fallback_to_memory`` is False.
        """
        if self._initialized:
            return
        self._lost = anyio.Event()
        await self.redis.connect(verify=False)
        try:
            await self.redis.check()
        except REDIS_ERRORS as exc:
            if not self.fallback_to_memory:
                await self.redis.aclose()
                raise GateError(
                    f"Redis at {self.url} is unreachable ({type(exc).__name__}: {exc}); "
                    "start it, fix REDIS_URL, or allow fallback_to_memory"
                ) from exc
            self._initialized = True
            self._fall_back(exc)
            return
        self._initialized = True
        self._using_redis = True
        log.info("limits shared through Redis", url=self.url, cluster=self.redis.is_cluster)

    async def aclose(self) -> None:
        """Close the connection to Redis (from the task that called :meth:`initialize`)."""
        self._using_redis = False
        self._initialized = False
        await self.redis.aclose()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Initialize, report started, then bring Redis back whenever it is lost.

        While on memory, tries ``PING`` every ``reconnect_interval`` seconds
        (doubling up to 5 s) and switches back to Redis once it answers. Runs
        until cancelled, then closes the connection to Redis.

        Raises:
          GateError: before starting, as :meth:`initialize`.
          RuntimeError: :meth:`initialize` was already called (by another owner).
        """
        if self._initialized:
            raise RuntimeError("HybridRateLimiter: use either initialize() or run(), not both")
        self._reconnecting = self.fallback_to_memory
        try:
            await self.initialize()
        except BaseException:
            self._reconnecting = False
            raise
        try:
            task_status.started()
            if not self.fallback_to_memory:
                await anyio.sleep_forever()  # nothing to bring back: operations raise
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._share_stats)
                while True:
                    await self._watch()
                    await self._reconnect()
        finally:
            self._reconnecting = False
            await self.aclose()

    async def _share_stats(self) -> None:
        """Every ``stats_interval``, while on Redis, share the statistics of each key
        that no settlement carried in that time."""
        deadline = anyio.current_time()
        while True:
            deadline += self.stats_interval
            await anyio.sleep_until(deadline)
            source = self.stats_source
            if not self._using_redis or source is None:
                continue
            try:
                for key_id in list(source()):
                    due = self._due_share(key_id)
                    if due is not None:
                        key, share = due
                        _follow(key, await self.redis.share_stats(key_id, share))
            except REDIS_ERRORS as exc:  # the heartbeat or the next operation falls back
                log.debug("could not share statistics", url=self.url, error=exc)

    def _share_of(self, key_id: str, key: SharedKey) -> StatsShare:
        """What to share of ``key`` now; it is next due a ``stats_interval`` later."""
        self._stats_due[key_id] = anyio.current_time() + self.stats_interval
        # Three missed reports and a process no longer counts in the averages.
        return StatsShare(
            key.stats, 3 * self.stats_interval, key_fingerprint(key.key.api_key), key.disabled
        )

    def _due_share(self, key_id: str) -> tuple[SharedKey, StatsShare] | None:
        """``key_id``'s statistics, if they are due and Redis is in use."""
        source = self.stats_source
        if not self._using_redis or source is None:
            return None
        if self._stats_due.get(key_id, -math.inf) > anyio.current_time():
            return None
        key = source().get(key_id)
        return None if key is None else (key, self._share_of(key_id, key))

    async def _watch(self) -> None:
        """Return once Redis is lost: an operation failed, or a heartbeat did."""
        lost = self._lost
        assert lost is not None
        while not lost.is_set():
            with anyio.move_on_at(self.redis.last_reply + self.heartbeat_interval):
                await lost.wait()
                return
            if anyio.current_time() - self.redis.last_reply < self.heartbeat_interval:
                continue  # operations answered meanwhile: Redis is there
            try:
                await self.redis.ping()
            except REDIS_ERRORS as exc:
                self._fall_back(exc)

    async def _reconnect(self) -> None:
        delay = self.reconnect_interval
        while True:
            await anyio.sleep(delay)
            try:
                await self.redis.check()
                await self._merge_memory()
            except REDIS_ERRORS as exc:
                log.debug("Redis still unreachable", url=self.url, error=exc)
                delay = min(delay * 2, _MAX_RECONNECT_INTERVAL)
                continue
            self._lost = anyio.Event()
            self._using_redis = True
            log.warning("Redis is back: limits are shared again", url=self.url)
            # Again: calls admitted on memory during the first merge's round trips.
            with contextlib.suppress(*REDIS_ERRORS):
                await self._merge_memory()
            return

    async def _merge_memory(self) -> None:
        for key_id, model, pair in self.memory.pairs():
            await self.redis.merge(key_id, model, pair)

    async def __aenter__(self) -> HybridRateLimiter:
        """Start :meth:`run` in a task group nested in this task.

        Raises:
          GateError: as :meth:`initialize` (unwrapped: no task is left running).
        """
        stack = contextlib.AsyncExitStack()
        task_group = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(task_group.cancel_scope.cancel)
        try:
            await task_group.start(self.run)
        except BaseException:
            await stack.aclose()
            raise
        self._exit_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop :meth:`run` and close the connection to Redis.

        An exception from the ``async with`` body propagates as it is (the task
        group exits cleanly first, so it is not wrapped in an exception group).
        """
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            await stack.aclose()

    # -- switching -------------------------------------------------------------------------

    def _fall_back(self, exc: BaseException) -> None:
        """Switch to memory, starting from the last state seen in Redis; warn once per outage."""
        if self._lost is None or self._lost.is_set():
            return  # already on memory, already warned
        if self._using_redis:
            self._seed_memory()
        self._using_redis = False
        self._lost.set()
        log.warning(
            "Redis unreachable or failing: limits are now per process (memory), not shared",
            url=self.url,
            error=exc,
            reconnect=(
                f"every {self.reconnect_interval:g}s or more"
                if self._reconnecting
                else "no (HybridRateLimiter.run() is not running)"
            ),
        )

    def _seed_memory(self) -> None:
        for key_id, model, cached in self.redis.cached_pairs():
            self.memory.register(key_id, model, cached.spec)
            pair = self.memory.pair(key_id, model)
            cells = zip(
                (pair.requests, pair.tokens, *pair.extra),
                (cached.requests, cached.tokens, *cached.extra),
                strict=True,
            )
            for mine, seen in cells:
                mine.tat, mine.interval, mine.capacity = seen.tat, seen.interval, seen.capacity
                mine.phantom = 0.0
            pair.cooldown_until = cached.cooldown_until

    async def _route(self, operation: Callable[[StateBackend], Awaitable[T]]) -> T:
        if not self._initialized:
            raise GateError("HybridRateLimiter is not initialized: call initialize() first")
        if self._using_redis:
            try:
                return await operation(self.redis)
            except REDIS_ERRORS as exc:
                if not self.fallback_to_memory:
                    raise GateError(
                        f"Redis at {self.url} is unreachable or failing "
                        f"({type(exc).__name__}: {exc})"
                    ) from exc
                self._fall_back(exc)
        return await operation(self.memory)

    @property
    def _active(self) -> StateBackend:
        return self.redis if self._using_redis else self.memory

    async def refresh(self) -> None:
        """While on Redis, re-read the shared state of every pair (see
        :meth:`RedisState.refresh`), for reports. If Redis fails, the reports show
        the last state seen, and the next operation falls back as usual."""
        if not self._using_redis:
            return
        try:
            await self.redis.refresh()
        except REDIS_ERRORS as exc:
            log.debug("could not refresh the shared state", url=self.url, error=exc)

    # -- StateBackend ------------------------------------------------------------------

    def register(self, key_id: str, model: str, spec: LimitSpec) -> None:
        self.redis.register(key_id, model, spec)
        self.memory.register(key_id, model, spec)

    def unregister(self, key_id: str) -> None:
        self.redis.unregister(key_id)
        self.memory.unregister(key_id)

    async def reserve(self, key_id: str, model: str, cost: Cost) -> float:
        """See :meth:`StateBackend.reserve`.

        Raises:
          GateError: Redis is unreachable and ``fallback_to_memory`` is False,
            or the limiter was not initialized.
        """
        return await self._route(lambda state: state.reserve(key_id, model, cost))

    async def started(
        self,
        key_id: str,
        model: str,
        mark: AdmissionMark,
        admitted_at: float,
        at: float | None = None,
    ) -> None:
        await self._route(lambda state: state.started(key_id, model, mark, admitted_at, at))

    async def adjust(self, key_id: str, model: str, requests: float, tokens: float) -> None:
        await self._route(lambda state: state.adjust(key_id, model, requests, tokens))

    async def release(self, key_id: str, model: str, tokens: float) -> None:
        await self._route(lambda state: state.release(key_id, model, tokens))

    def mark(self, key_id: str, model: str) -> AdmissionMark:
        return self._active.mark(key_id, model)

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
        await self._route(
            lambda state: state.learn(
                key_id,
                model,
                info,
                since=since,
                charged_tokens=charged_tokens,
                charged_requests=charged_requests,
            )
        )

    async def cool_down(self, key_id: str, model: str, seconds: float) -> None:
        await self._route(lambda state: state.cool_down(key_id, model, seconds))

    async def settle(self, key_id: str, model: str, corrections: Sequence[Correction]) -> None:
        """See :meth:`StateBackend.settle`; carries ``key_id``'s statistics when due."""
        due = self._due_share(key_id)
        if due is None:
            return await self._route(lambda state: state.settle(key_id, model, corrections))
        key, share = due

        async def settle(state: StateBackend) -> None:
            if state is self.memory:
                return await state.settle(key_id, model, corrections)
            shared = await self.redis.settle_sharing(key_id, model, corrections, share)
            if shared is not None:
                _follow(key, shared)

        await self._route(settle)

    def utilization(self, key_id: str, model: str, now: float) -> float:
        return self._active.utilization(key_id, model, now)

    def full_at(self, key_id: str, model: str) -> float:
        return self._active.full_at(key_id, model)

    def snapshot(self, key_id: str, model: str) -> BucketSnapshot:
        return self._active.snapshot(key_id, model)
