"""A streamed completion as the caller reads it: the provider's chunks, then one outcome."""

from __future__ import annotations

import contextlib
import math

import anyio

from maxllm_gate.actors.job import Job, JobState
from maxllm_gate.errors import RequestTimeoutError
from maxllm_gate.providers.base import StreamChunk
from maxllm_gate.responses import ChatResponse

__all__ = ["ChatStream"]


class ChatStream:
    """The chunks of one streamed completion, as the provider sends them.

    Returned by :meth:`maxllm_gate.stream_chunks`. Iterate it for
    `~maxllm_gate.providers.base.StreamChunk`\\ s: the text deltas, then the
    chunk that carries ``finish_reason``, then one that carries ``usage``
    (the provider's, or our count of the text if it sent none). After the last
    chunk, :attr:`response` holds the whole answer as a `ChatResponse`
    (``content``, ``usage``, ``key_used``, ``attempts``, ``queue_time``...).

    Iteration raises what ``chat()`` raises; an error after text
    was relayed is raised here, not retried. Read the chunks only as fast as
    you need: the provider's stream is read as fast as you consume it.
    Always :meth:`aclose` it (or use ``async with``): closing it early closes
    the provider's stream and settles the reservation.
    """

    __slots__ = ("_deadline", "_job", "_usage_seen", "response")

    def __init__(self, job: Job, deadline: float = math.inf) -> None:
        self._job = job
        self._deadline = deadline
        self._usage_seen = False
        self.response: ChatResponse | None = None

    @property
    def request_id(self) -> str:
        """The id in every log event about this request."""
        return self._job.request_id

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> StreamChunk:
        """The next chunk.

        Raises:
          RequestTimeoutError: the request's timeout passed (the request is abandoned).
          GateError: the request's error.
        """
        if self.response is not None:
            raise StopAsyncIteration
        job = self._job
        receive = job.stream_receive
        assert receive is not None
        chunk: StreamChunk | None = None
        ended = contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError)
        with anyio.move_on_at(self._deadline) as scope, ended:
            chunk = await receive.receive()
        if scope.cancelled_caught:
            where = job.describe()  # before abandon() forgets where it was
            job.abandon()
            raise RequestTimeoutError(f"request {job.request_id} timed out ({where})")
        if chunk is not None:
            self._usage_seen = self._usage_seen or chunk.usage is not None
            return chunk
        if job.state is not JobState.DONE:  # closed by aclose()
            raise StopAsyncIteration
        self.response = job.outcome()  # raises the job's error, if it ended with one
        if not self._usage_seen and self.response.usage is not None:
            return StreamChunk(usage=self.response.usage)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop reading: an unfinished request is abandoned (its call is cancelled)."""
        if self._job.state is not JobState.DONE:
            self._job.abandon()
        if self._job.stream_receive is not None:
            self._job.stream_receive.close()

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
