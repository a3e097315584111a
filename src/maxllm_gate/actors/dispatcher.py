"""The dispatcher actor: priority queues per model, routed to keys by strategy.

Inbox: jobs from :meth:`Dispatcher.submit` or, waiting for room while the queue
is full, :meth:`Dispatcher.submit_when_room` (callers), and :meth:`Dispatcher.requeue`
(key actors, after a 429, a retryable error or a crash), and wake-ups from
:meth:`Dispatcher.notify` (capacity given back, a key added, enabled or freed).
Owns: the queues. Each model has a lane of three FIFO heaps (high, medium,
low); a lane's head is its next job and nothing behind it overtakes it, so
every job is served in order.
On cancellation: returns at once; the queues stay intact for a restart.

**Priority and aging.** A job competes as if it had arrived
``level * priority_aging`` seconds later than it did (high = 0, medium = 1,
low = 2). So high runs before medium before low, but a job that has waited
``priority_aging`` seconds rises one level: a low job waits at most
``2 * priority_aging`` seconds behind newer high-priority work, never forever.

**Deferral without polling.** When the head of a lane fits on no key, the
dispatcher sleeps until the earliest time any key's buckets will fit it, or
until a notify: it never wakes to find nothing changed on a timer.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.lowlevel

from maxllm_gate._logging import get_logger
from maxllm_gate.actors.job import PRIORITY_LEVELS, Job, JobState
from maxllm_gate.errors import (
    NoKeyAvailableError,
    QueueFullError,
    RequestTimeoutError,
    RequestTooLargeError,
    ShutdownError,
)

if TYPE_CHECKING:
    from maxllm_gate.actors.key_actor import KeyActor
    from maxllm_gate.strategies import Strategy

__all__ = ["Dispatcher"]

log = get_logger("maxllm_gate.actors.dispatcher")


class _Lane:
    """The queued jobs of one model, one heap per priority level, ordered by arrival."""

    __slots__ = ("deadlines", "heaps", "size")

    def __init__(self) -> None:
        self.heaps: tuple[list[tuple[float, int, Job]], ...] = ([], [], [])
        self.size = 0
        self.deadlines: list[tuple[float, int, Job]] = []  # of the jobs that have one

    def push(self, job: Job) -> None:
        heapq.heappush(self.heaps[job.priority], (job.enqueued_at, job.seq, job))
        self.size += 1
        if job.deadline != math.inf:
            heapq.heappush(self.deadlines, (job.deadline, job.seq, job))

    def due_before(self, at: float) -> list[Job]:
        """Take the queued jobs whose deadline comes before ``at``, soonest first."""
        due, deadlines = [], self.deadlines
        while deadlines and (deadlines[0][2].state is not JobState.QUEUED or deadlines[0][0] < at):
            _, _, job = heapq.heappop(deadlines)
            if job.state is JobState.QUEUED:
                due.append(job)
        return due

    def head(self, aging: float) -> Job | None:
        best: tuple[float, int, Job] | None = None
        for level, heap in enumerate(self.heaps):
            while heap and heap[0][2].state is not JobState.QUEUED:
                heapq.heappop(heap)  # abandoned while queued; already uncounted
            if heap:
                enqueued_at, seq, job = heap[0]
                rank = (enqueued_at + level * aging, seq, job)
                if best is None or rank[:2] < best[:2]:
                    best = rank
        return None if best is None else best[2]

    def pop(self, job: Job) -> None:
        heap = self.heaps[job.priority]
        if heap[0][2] is job:
            heapq.heappop(heap)
        else:  # an earlier job came back while the state backend answered: look for it
            heap.remove(next(entry for entry in heap if entry[2] is job))
            heapq.heapify(heap)
        self.size -= 1

    def live_jobs(self) -> list[Job]:
        return [job for heap in self.heaps for _, _, job in heap if job.state is JobState.QUEUED]

    def waiting_by_level(self) -> list[int]:
        """How many live jobs wait at each priority level (not those in backoff)."""
        return [
            sum(1 for _, _, job in heap if job.state is JobState.QUEUED and not job.in_delay)
            for heap in self.heaps
        ]


class _KeyIndex:
    """The keys serving one model in a heap, by an indexed strategy's key (lowest
    first). Entries are replaced, not updated: a stale one is skipped when popped."""

    __slots__ = ("current", "heap", "turns")

    def __init__(self, actors: list[KeyActor]) -> None:
        self.heap: list[tuple[float, int, KeyActor]] = []
        self.current: dict[str, tuple[float, int, KeyActor]] = {}
        # Per key: the admission count when it last admitted (see Strategy.index_key).
        self.turns = {a.key_id: float(i - len(actors)) for i, a in enumerate(actors)}

    def put(self, actor: KeyActor, key: float, position: int) -> None:
        entry = (key, position, actor)
        self.current[actor.key_id] = entry
        heapq.heappush(self.heap, entry)
        if len(self.heap) > 2 * len(self.current) + 64:  # shed the stale entries
            self.heap = list(self.current.values())
            heapq.heapify(self.heap)

    def pop(self) -> tuple[float, int, KeyActor] | None:
        heap, current = self.heap, self.current
        while heap:
            entry = heapq.heappop(heap)
            if current.get(entry[2].key_id) is entry:
                del current[entry[2].key_id]
                return entry
        return None

    def next_key(self) -> float:
        heap, current = self.heap, self.current
        while heap and current.get(heap[0][2].key_id) is not heap[0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf


class Dispatcher:
    """Routes queued jobs to key actors as capacity allows.

    With an indexed strategy (:attr:`Strategy.indexed`: ``least_utilized``,
    ``round_robin``) each model's keys sit in a heap, so a decision costs
    O(log n) in the number of keys; the others score every key per decision.
    """

    def __init__(self, *, strategy: Strategy, max_queue_size: int, priority_aging: float) -> None:
        self.strategy = strategy
        self.max_queue_size = max_queue_size
        self.priority_aging = priority_aging
        self.actors: dict[str, KeyActor] = {}
        self._by_model: dict[str, list[KeyActor]] = {}  # cache of _serving()
        self._indexes: dict[str, _KeyIndex] = {}  # with an indexed strategy; as _by_model
        self._turn = 0  # admissions so far (see Strategy.index_key)
        self._lanes: dict[str, _Lane] = {}
        self._delayed: list[tuple[float, int, Job]] = []
        self._wake: anyio.Event | None = None
        self._seq = 0
        self.queued = 0  # jobs waiting in lanes or in backoff
        self.outstanding = 0  # jobs accepted and not yet settled
        self.closed = False
        self._drained: anyio.Event | None = None
        self._room_waiters: deque[anyio.Event] = deque()  # submit_when_room(), oldest first

    # -- inbox ------------------------------------------------------------------------

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def submit(self, job: Job) -> None:
        """Accept a new job, or raise at once without enqueuing it.

        Raises:
          ShutdownError: the client is shutting down.
          QueueFullError: ``max_queue_size`` jobs are already waiting.
          NoKeyAvailableError: no key (enabled or not yet) serves ``job.model``.
          RequestTooLargeError: the job's charge is over a minute of the token
            limit of every key serving its model: no provider would admit it.
        """
        if self.closed:
            raise ShutdownError("the client is shutting down; no new requests are accepted")
        if self.queued >= self.max_queue_size:
            raise QueueFullError(
                f"{self.queued} requests are already queued (max_queue_size="
                f"{self.max_queue_size}); retry later or raise MAX_QUEUE_SIZE"
            )
        serving = self._serving(job.model)
        # Both stop at the first key that will do: no pass over every key per request.
        if not any(a.disabled is None for a in serving):
            raise NoKeyAvailableError(self._no_key_message(job.model))
        if not any(a.disabled is None and a.can_ever_admit(job) for a in serving):
            enabled = [a for a in serving if a.disabled is None]
            raise RequestTooLargeError(_too_large_message(job, enabled))
        job.on_settled = self._settled
        self.outstanding += 1
        self._enqueue(job)

    async def submit_when_room(self, job: Job) -> None:
        """:meth:`submit`, but while ``max_queue_size`` jobs wait, wait for room
        (backpressure) instead of raising :class:`QueueFullError`.

        Callers waiting for room get it in the order they came. Raises what
        :meth:`submit` raises, but never ``QueueFullError``. Cancellation while
        waiting leaves nothing queued, and passes a place it was given on.
        """
        first = True
        while not self.closed and (
            self.queued >= self.max_queue_size or (first and self._room_waiters)
        ):
            waiter = anyio.Event()
            if first:
                self._room_waiters.append(waiter)
            else:  # woken, then beaten to the room by a plain submit(): still next
                self._room_waiters.appendleft(waiter)
            first = False
            try:
                await waiter.wait()
            except BaseException:
                if waiter.is_set():
                    self._make_room()
                else:
                    self._room_waiters.remove(waiter)
                raise
        self.submit(job)

    def _make_room(self) -> None:
        """A queued job left the queue: the oldest caller waiting for room may come in."""
        if self._room_waiters and self.queued < self.max_queue_size:
            self._room_waiters.popleft().set()

    def requeue(self, job: Job, delay: float = 0.0) -> None:
        """Put a job back, at its old place in line, after ``delay`` seconds."""
        job.mark_queued()
        if delay > 0:
            job.in_delay = True
            heapq.heappush(self._delayed, (anyio.current_time() + delay, job.seq, job))
            self.queued += 1
            self.notify()
        else:
            self._enqueue(job)

    def notify(self) -> None:
        """Something changed that may let a waiting job fit: look again.

        With no job waiting there is nothing to look at (the next job to come
        wakes the loop itself): most calls end with nothing queued.
        """
        if self._wake is not None and self.queued:
            self._wake.set()

    def _enqueue(self, job: Job) -> None:
        self._lane_of(job).push(job)
        self.queued += 1
        self.notify()

    def _settled(self, job: Job, previous: JobState) -> None:
        if previous is JobState.QUEUED:  # it leaves the queue; heaps drop it lazily
            self.queued -= 1
            if self._room_waiters:
                self._make_room()
            if not job.in_delay:
                self._lane_of(job).size -= 1
            self.notify()
        self.outstanding -= 1
        if self.outstanding == 0 and self._drained is not None:
            self._drained.set()

    def _lane_of(self, job: Job) -> _Lane:
        lane = self._lanes.get(job.model)
        if lane is None:
            lane = self._lanes[job.model] = _Lane()
        return lane

    def queued_by_priority(self) -> list[int]:
        """How many jobs wait in the lanes at each priority level (high, medium,
        low), over every model; jobs waiting out a retry backoff are not counted."""
        totals = [0] * len(PRIORITY_LEVELS)
        for lane in self._lanes.values():
            for level, count in enumerate(lane.waiting_by_level()):
                totals[level] += count
        return totals

    # -- keys -------------------------------------------------------------------------

    def add_actor(self, actor: KeyActor) -> None:
        self.actors[actor.key_id] = actor
        self._by_model.clear()
        self._indexes.clear()
        self.notify()

    def remove_actor(self, key_id: str) -> KeyActor | None:
        actor = self.actors.pop(key_id, None)
        self._by_model.clear()
        self._indexes.clear()
        self.notify()
        return actor

    def key_changed(self, actor: KeyActor, model: str) -> None:
        """``actor``'s state for ``model`` changed (a call ended): re-place it."""
        index = self._indexes.get(model)
        if index is not None and actor.key_id in index.current:
            self._place(index, actor, model, index.current[actor.key_id][1])

    def _index(self, model: str) -> _KeyIndex:
        index = self._indexes.get(model)
        if index is None:
            serving = self._serving(model)
            index = self._indexes[model] = _KeyIndex(serving)
            for position, actor in enumerate(serving):
                self._place(index, actor, model, position)
        return index

    def _place(self, index: _KeyIndex, actor: KeyActor, model: str, position: int) -> None:
        now = anyio.current_time()
        key = self.strategy.index_key(actor, model, now, index.turns[actor.key_id])
        index.put(actor, key, position)

    def _best_first(self, model: str, tried: list[tuple[int, KeyActor]]) -> Iterator[KeyActor]:
        """The keys serving ``model``, best first by the index, each re-scored as it
        comes up (an entry may be stale: Redis, a refund). Each one yielded is added
        to ``tried``, to be placed again once the decision is made."""
        index = self._index(model)
        while (entry := index.pop()) is not None:
            key, position, actor = entry
            fresh = self.strategy.index_key(
                actor, model, anyio.current_time(), index.turns[actor.key_id]
            )
            # Worse than it was (beyond rounding), and than the next: back in line.
            if fresh > key + 1e-9 and fresh > index.next_key():
                index.put(actor, fresh, position)
                continue
            tried.append((position, actor))
            if actor.available:
                yield actor

    def _serving(self, model: str) -> list[KeyActor]:
        serving = self._by_model.get(model)
        if serving is None:
            serving = [a for a in self.actors.values() if model in a.models]
            self._by_model[model] = serving
        return serving

    def _no_key_message(self, model: str) -> str:
        serving = self._serving(model)
        if not serving:
            known = sorted({m for a in self.actors.values() for m in a.models})
            return f"no configured key serves model {model!r}; configured models: {known}"
        reasons = ", ".join(f"{a.key_id}: {a.disabled}" for a in serving)
        return f"every key serving model {model!r} is disabled ({reasons})"

    # -- the loop ---------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Dispatch forever; wake on notify or when the earliest deferred job fits."""
        self._wake = anyio.Event()
        task_status.started()
        while True:
            self._wake = anyio.Event()
            next_at = await self._dispatch_ready()
            if self._wake.is_set():
                await anyio.lowlevel.checkpoint()
                continue
            if next_at == math.inf:
                await self._wake.wait()
            else:
                with anyio.move_on_at(next_at):
                    await self._wake.wait()

    async def _dispatch_ready(self) -> float:
        """Start every job that fits now; return when the next one could."""
        now = anyio.current_time()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, job = heapq.heappop(self._delayed)
            if job.state is JobState.QUEUED:
                job.in_delay = False
                self._lane_of(job).push(job)
        next_at = self._delayed[0][0] if self._delayed else math.inf
        for model, lane in list(self._lanes.items()):
            if lane.size > 0:
                next_at = min(next_at, await self._drain_lane(model, lane))
        return next_at

    async def _drain_lane(self, model: str, lane: _Lane) -> float:
        serving = self._serving(model)
        if not any(a.disabled is None for a in serving):
            self._fail_lane(lane, NoKeyAvailableError(self._no_key_message(model)))
            return math.inf
        indexed = self.strategy.indexed
        candidates = serving if indexed else [a for a in serving if a.available]
        tried: list[tuple[int, KeyActor]] = []
        try:
            return await self._drain_lane_on(model, lane, serving, candidates, tried)
        finally:
            if tried:
                self._replace(model, tried)

    def _replace(self, model: str, tried: list[tuple[int, KeyActor]]) -> None:
        index = self._indexes.get(model)
        if index is not None:
            for position, actor in tried:
                if actor.key_id in index.turns:
                    self._place(index, actor, model, position)
        tried.clear()

    async def _drain_lane_on(
        self,
        model: str,
        lane: _Lane,
        serving: list[KeyActor],
        candidates: list[KeyActor],
        tried: list[tuple[int, KeyActor]],
    ) -> float:
        indexed = self.strategy.indexed
        while (job := lane.head(self.priority_aging)) is not None:
            wait = math.inf
            now = anyio.current_time()
            if indexed:
                self._replace(model, tried)
                ranked: Iterable[KeyActor] = self._best_first(model, tried)
            else:
                ranked = self.strategy.rank(candidates, job, now)
            for actor in ranked:
                fits_in = await actor.try_admit(job, now)
                if fits_in > 0.0:
                    wait = min(wait, fits_in)
                    continue
                if job.state is not JobState.QUEUED:  # abandoned while we reserved
                    await actor.cancel_reservation(job)
                    break
                if not actor.available:  # stopped or crashed while we reserved
                    await actor.cancel_reservation(job)
                    continue
                lane.pop(job)
                self.queued -= 1
                if self._room_waiters:
                    self._make_room()
                self._turn += 1
                index = self._indexes.get(model) if indexed else None
                if index is not None and actor.key_id in index.turns:
                    index.turns[actor.key_id] = float(self._turn)
                actor.start_call(job, anyio.current_time())
                break
            else:
                fits_at = anyio.current_time() + wait
                # A wait is known only when no key that could take the job sooner is
                # down, and no refund of unused tokens (usage accounting, Anthropic's
                # output) can come sooner.
                known_wait = all(a.available for a in serving if a.disabled is None) and not any(
                    a.refunds_usage(model) for a in serving
                )
                if not known_wait or wait == math.inf:  # inf: a call in flight must end
                    return fits_at
                # Nothing behind the head starts before it: whoever gives up sooner
                # is told now, not at its deadline.
                for late in lane.due_before(fits_at):
                    late.fail(_too_late_error(late, wait, candidates))  # _settled uncounts it
                if job.state is JobState.QUEUED:
                    return fits_at
        return math.inf

    def _fail_lane(self, lane: _Lane, error: Exception) -> None:
        for job in lane.live_jobs():
            job.fail(error)  # _settled uncounts it

    # -- shutdown -----------------------------------------------------------------------

    def close(self) -> None:
        """Accept no new jobs; queued and running ones carry on."""
        self.closed = True
        while self._room_waiters:  # they are told ShutdownError by submit()
            self._room_waiters.popleft().set()
        self._drained = anyio.Event()
        if self.outstanding == 0:
            self._drained.set()

    async def wait_drained(self) -> None:
        assert self._drained is not None, "close() first"
        await self._drained.wait()

    def fail_queued(self, error: Exception) -> None:
        """Fail every job still waiting (shutdown's last step)."""
        for lane in self._lanes.values():
            self._fail_lane(lane, error)
        for _, _, job in self._delayed:
            job.fail(error)
        self._delayed.clear()


def _too_large_message(job: Job, serving: list[KeyActor]) -> str:
    largest = max(serving, key=lambda a: a.tpm_limit(job.model))
    charge = largest.charge(job).tokens
    if job.embed_input is not None:
        return (
            f"this embedding request charges {charge:.0f} tokens (its input), more than a "
            f"minute of the largest token limit of any key serving model {job.model!r} "
            f"({largest.tpm_limit(job.model)} tokens per minute): no provider would admit "
            "it; send fewer inputs per request"
        )
    return (
        f"this request charges {charge:.0f} tokens (its prompt plus max_tokens={job.max_tokens}"
        f"{f' times n={job.n}' if job.n > 1 else ''}), more than a minute of the largest "
        f"token limit of any key serving model {job.model!r} ({largest.tpm_limit(job.model)} "
        "tokens per minute): no provider would admit it; lower max_tokens or shorten the prompt"
    )


def _too_late_error(job: Job, wait: float, keys: list[KeyActor]) -> RequestTimeoutError:
    timeout = job.deadline - job.submitted_at
    spent = [
        f"{actor.key_id} has spent {', '.join(why)}"
        for actor in keys
        if (why := actor.snapshot(job.model).spent(actor.charge(job)))
    ]
    return RequestTimeoutError(
        f"request {job.request_id} cannot start before its timeout ({timeout:g}s): the "
        f"earliest any key serving {job.model!r} can take it is in {wait:.3f}s"
        + (f" ({'; '.join(spent)})" if spent else "")
    )
