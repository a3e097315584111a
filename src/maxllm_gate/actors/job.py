"""A job: one accepted request, from ``chat()`` or ``embed()`` until its single outcome.

A job is queued, then running on a key, possibly queued again (after a 429,
a retryable failure or a crashed actor), and finally done: it holds exactly one
result or one error. The caller waits on :meth:`Job.wait`; everything else in
the scheduler only moves it between states.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from maxllm_gate.errors import RequestTimeoutError
from maxllm_gate.limits import AdmissionMark, Cost, PromptSize
from maxllm_gate.priority import PRIORITY_LEVELS
from maxllm_gate.providers.base import EmbeddingInput, StreamChunk
from maxllm_gate.responses import ChatResponse, EmbeddingResponse

__all__ = ["PRIORITY_LEVELS", "Job", "JobState"]


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ABANDONED = "abandoned"


class Job:
    """One request on its way through the scheduler.

    ``prompt`` measures the prompt every way a limiter may count it; each key
    prices it by its provider's rule (see :mod:`maxllm_gate.limits.charge`), and
    ``reserved`` is what the key that admitted it took. ``cost`` is a key-free
    estimate of the charge, for strategies that rank keys by it.
    An embedding job has ``embed_input`` (what to embed), no messages, and
    ``max_tokens`` 0: its charge is its input only.
    ``enqueued_at`` is kept when the job is re-queued, so a job put back after a
    429 keeps its place in line. ``deadline`` is when its caller stops waiting.
    """

    __slots__ = (
        "attempts",
        "call_scope",
        "charged",
        "cost",
        "crowd",
        "crowded",
        "deadline",
        "defaults",
        "dispatched_at",
        "done",
        "embed_input",
        "enqueued_at",
        "error",
        "first_rate_limited_at",
        "in_delay",
        "key_id",
        "left_at",
        "mark",
        "max_tokens",
        "messages",
        "model",
        "multiplier",
        "n",
        "on_settled",
        "params",
        "priority",
        "prompt",
        "queue_time",
        "queued_since",
        "rate_limits",
        "relayed",
        "request_id",
        "reserved",
        "response",
        "retries",
        "sent",
        "seq",
        "state",
        "stream_receive",
        "stream_send",
        "streamed",
        "submitted_at",
    )

    def __init__(
        self,
        *,
        request_id: str,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any],
        priority: int,
        cost: Cost,
        max_tokens: int,
        seq: int,
        stream: bool = False,
        stream_buffer: int = 32,
        defaults: frozenset[str] = frozenset(),
        prompt: PromptSize,
        n: int = 1,
        timeout: float | None = None,
        embed_input: EmbeddingInput | None = None,
    ) -> None:
        now = anyio.current_time()
        self.embed_input = embed_input
        self.request_id = request_id
        self.model = model
        self.messages = messages
        self.params = params
        self.defaults = defaults  # params filled in from the config (see ProviderCall)
        self.priority = priority
        self.cost = cost
        self.max_tokens = max_tokens
        self.prompt = prompt
        self.n = n
        self.deadline = math.inf if timeout is None else now + timeout
        self.reserved = cost  # replaced by what a key takes when it admits the job
        self.multiplier = 1.0  # reserved tokens per token of the charge (the key's lessons)
        self.rate_limits = 0  # 429s drawn so far
        self.first_rate_limited_at = math.inf
        # Calls to its key and model in flight that left at about the same time, and
        # how many of those reached the provider's accounting (a refusal takes one out).
        self.crowd: set[Job] | None = None
        self.crowded = 0
        self.charged = 0.0  # what the provider is taken to debit: the charge, corrected
        self.seq = seq
        self.submitted_at = now
        self.enqueued_at = now
        self.queued_since = now
        self.queue_time = 0.0
        self.state = JobState.QUEUED
        self.attempts = 0
        self.retries = 0
        self.key_id: str | None = None
        self.mark: AdmissionMark | None = None  # the key's admission count after ours
        self.dispatched_at = now
        self.left_at = now  # when its call last left for the provider
        self.relayed: list[str] = []  # streamed text already sent to the caller
        self.sent = False
        self.streamed = False
        self.call_scope: anyio.CancelScope | None = None
        self.in_delay = False  # waiting out a retry backoff, not in a lane
        self.on_settled: Callable[[Job, JobState], None] | None = None
        self.done = anyio.Event()
        self.response: ChatResponse | EmbeddingResponse | None = None
        self.error: BaseException | None = None
        # A streamed job's chunks, relayed by its key actor as they arrive.
        self.stream_send: MemoryObjectSendStream[StreamChunk] | None = None
        self.stream_receive: MemoryObjectReceiveStream[StreamChunk] | None = None
        if stream:
            self.stream_send, self.stream_receive = anyio.create_memory_object_stream[StreamChunk](
                stream_buffer
            )

    # -- transitions, called by the scheduler ---------------------------------

    def mark_running(self, key_id: str, now: float) -> None:
        self.queue_time += now - self.queued_since
        self.state = JobState.RUNNING
        self.key_id = key_id
        self.dispatched_at = now
        self.sent = False

    def mark_queued(self) -> None:
        self.state = JobState.QUEUED
        self.queued_since = anyio.current_time()
        self.call_scope = None

    def finish(self, response: ChatResponse | EmbeddingResponse) -> None:
        """Settle with a result. Ignored if the job already ended."""
        if self._settle():
            self.response = response

    def fail(self, error: BaseException) -> None:
        """Settle with an error. Ignored if the job already ended."""
        if self._settle():
            self.error = error

    def _settle(self) -> bool:
        if self.state in (JobState.DONE, JobState.ABANDONED):
            return False
        previous, self.state = self.state, JobState.DONE
        self._close(previous)
        return True

    def _close(self, previous: JobState) -> None:
        if self.stream_send is not None:
            self.stream_send.close()
        self.done.set()
        if self.on_settled is not None:
            self.on_settled(self, previous)

    def abandon(self) -> None:
        """The caller stopped waiting (cancelled, timed out, or closed the stream).

        A queued job is dropped from the queue; a running call is cancelled and
        its reservation settled by its key actor.
        """
        if self.state in (JobState.DONE, JobState.ABANDONED):
            return
        previous, self.state = self.state, JobState.ABANDONED
        if self.stream_receive is not None:
            self.stream_receive.close()
        if previous is JobState.RUNNING and self.call_scope is not None:
            self.call_scope.cancel()
        self._close(previous)

    @property
    def finished(self) -> bool:
        return self.state in (JobState.DONE, JobState.ABANDONED)

    # -- the caller's side ------------------------------------------------------

    async def wait(self, deadline: float = math.inf) -> ChatResponse:
        """Wait for a chat job's outcome until ``deadline`` (on ``anyio.current_time()``).

        Raises:
          RequestTimeoutError: the deadline passed first; the job is abandoned.
          GateError: the job's error.

        Cancellation abandons the job (refunding what it had reserved) and
        propagates.
        """
        await self._wait_done(deadline)
        return self.outcome()

    async def wait_embedding(self, deadline: float = math.inf) -> EmbeddingResponse:
        """:meth:`wait`, for an embedding job."""
        await self._wait_done(deadline)
        response = self._result()
        assert isinstance(response, EmbeddingResponse)
        return response

    async def _wait_done(self, deadline: float) -> None:
        where = ""
        try:
            if deadline == math.inf:
                await self.done.wait()
            else:
                with anyio.move_on_at(deadline):
                    await self.done.wait()
        finally:
            if self.state is not JobState.DONE:
                where = self.describe()  # before abandon() forgets where it was
                self.abandon()
        if self.state is not JobState.DONE:
            raise RequestTimeoutError(
                f"request {self.request_id} timed out after "
                f"{anyio.current_time() - self.submitted_at:.3f}s ({where})"
            )

    def outcome(self) -> ChatResponse:
        response = self._result()
        assert isinstance(response, ChatResponse)
        return response

    def _result(self) -> ChatResponse | EmbeddingResponse:
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response

    def describe(self) -> str:
        where = f"on key {self.key_id}" if self.state is JobState.RUNNING else "while queued"
        return f"{where}, after {self.attempts} attempt(s)"

    def __repr__(self) -> str:
        return (
            f"<Job {self.request_id} {self.model} {self.state.value} "
            f"priority={self.priority} attempts={self.attempts}>"
        )
