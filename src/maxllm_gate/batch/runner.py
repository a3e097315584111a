"""Running a batch through a client: bounded concurrency, results as they finish."""

from __future__ import annotations

import errno
import functools
import inspect
import os
import re
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from maxllm_gate.actors import Job, JobState
from maxllm_gate.batch.packs import EmbeddingPacks, line_inputs
from maxllm_gate.batch.requests import BatchRequest, InvalidLine, read_requests, unique
from maxllm_gate.batch.results import BatchResult, ResultsFile
from maxllm_gate.errors import GateError, QueueFullError, ShutdownError
from maxllm_gate.responses import ChatResponse, EmbeddingResponse

if TYPE_CHECKING:
    from maxllm_gate.client import maxllm_gate

__all__ = ["Batch", "BatchStats", "ModelUsage", "OnResult"]

OnResult = Callable[[BatchResult], "Awaitable[None] | None"]


@attrs.define
class ModelUsage:
    """Tokens of one (model, key) over the successful requests of a batch; the model is
    the one the requests asked for."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    admitted_tokens: int = 0  # what admission charged (ChatResponse.charged_tokens)
    largest: int = 0  # the most one request was charged (it may exceed a bucket)


@attrs.define
class BatchStats:
    """Live counts of a batch run (read them while it runs, e.g. for a progress bar).

    ``skipped`` ids were already in the output (``skipped_failed`` of them as
    errors); ``unfinished`` requests were stopped or cancelled and not written,
    so a resumed run does them.
    """

    succeeded: int = 0
    failed: int = 0  # including invalid lines
    invalid: int = 0
    skipped: int = 0
    skipped_failed: int = 0
    unfinished: int = 0
    running: int = 0
    waited: int = 0  # succeeded after waiting for capacity, instead of drawing a 429
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage: dict[tuple[str, str], ModelUsage] = attrs.Factory(dict)  # (model, key_id)
    started_at: float | None = None
    finished_at: float | None = None
    stopped: bool = False

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else anyio.current_time()
        return end - self.started_at

    def add(self, result: BatchResult) -> None:
        response = result.response
        if response is None:
            self.failed += 1
            self.invalid += result.error_code == "invalid_line"
            return
        self.succeeded += 1
        self.waited += response.queue_time >= _WAITED
        if response.usage is not None:
            # Under the name asked for: the keys' limits are under it, and a provider may
            # answer with another (OpenAI's dated snapshots: gpt-4o-mini-2024-07-18).
            model = result.model or response.model
            usage = self.usage.setdefault((model, response.key_used), ModelUsage())
            usage.requests += 1
            usage.prompt_tokens += response.usage.prompt_tokens
            usage.completion_tokens += response.usage.completion_tokens
            admitted = response.charged_tokens
            usage.admitted_tokens += admitted
            usage.largest = max(usage.largest, admitted)
            self.prompt_tokens += response.usage.prompt_tokens
            self.completion_tokens += response.usage.completion_tokens


_WAITED = 0.01  # seconds queued that count as held back for capacity (dispatch takes µs)


class Batch:
    """A batch of requests run through a client: ``Batch(client, "in.jsonl", output=...)``.

    Args:
      client: a started (or startable) client; the batch does not close it.
      requests: a path to a JSONL file, or an iterable of `BatchRequest`\\ s or
        dicts (batch format or bare bodies). Read lazily.
      output: a JSONL file to append results to; ids it holds are skipped.
      concurrency: requests submitted and not yet done, at most (queued or in
        flight); at most the client's ``max_queue_size``.
      on_result: called (and awaited, if it returns an awaitable) with each
        `BatchResult`, after it is written.
      retry_failed: take the error lines out of ``output`` first, and run
        their requests again.
      split: pack the inputs of embedding lines (same model and parameters)
        into requests of up to the provider's per-request limit
        (``max_embedding_inputs``), and write one result line per input line,
        with its own vectors. A pack's lines are written together (one
        ``write()``), so a resumed run sends none of them twice.

    ``await batch`` (or ``await batch.run()``) runs it to the end and returns
    its `BatchStats`. ``async with batch as results`` runs it in the background
    and yields each result as it finishes; leaving the block early cancels the
    requests still running (they are not written, so a resumed run does them).

    A bad input line becomes an error result with its reason, and the batch
    goes on. `stop` takes no new requests, drops those still queued and lets
    those sent to a provider finish; `cancel` cancels those too. Neither the
    dropped nor the cancelled are written, and neither is a request the client
    refused (it shut down, or its queue was full: the batch stops then).

    Raises (from ``run``, or entering or leaving the block):
      OSError: the input or the output file cannot be read or written, the
        output is the input file, or another run is writing to the output file
        (``EBUSY``). A write that fails mid-run (a full disk) stops the batch
        as `cancel` does, and its error is raised once the batch has ended.
    """

    def __init__(
        self,
        client: maxllm_gate,
        requests: str | os.PathLike[str] | Iterable[BatchRequest | Mapping[str, Any]],
        *,
        output: str | os.PathLike[str] | None = None,
        concurrency: int = 256,
        on_result: OnResult | None = None,
        retry_failed: bool = False,
        split: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.client = client
        self._requests = requests
        self.results_file = ResultsFile(output) if output is not None else None
        self.concurrency = min(concurrency, client.config.max_queue_size)
        self._on_result = on_result
        self._retry_failed = retry_failed
        self._split = split
        self.stats = BatchStats()
        self._feeding = anyio.CancelScope()
        self._running = anyio.CancelScope()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._send: MemoryObjectSendStream[BatchResult] | None = None
        self._done: dict[str, bool] = {}
        self._waiting: dict[Job, anyio.CancelScope] = {}  # submitted, not done
        self._error: OSError | None = None  # a result could not be written

    def stop(self) -> None:
        """Take no new requests, and drop those still queued (nothing was paid for them);
        those at a provider finish and are written."""
        self.stats.stopped = True
        self._feeding.cancel()
        for job, scope in list(self._waiting.items()):
            if job.state is JobState.QUEUED:
                scope.cancel()

    def cancel(self) -> None:
        """Stop, and cancel the requests still running (they are not written)."""
        self.stop()
        self._running.cancel()

    async def run(self) -> BatchStats:
        """Run every request to its end; return the counts."""
        self._open()
        await self._run(None)
        return self.stats

    def __await__(self) -> Generator[Any, None, BatchStats]:
        return self.run().__await__()

    async def __aenter__(self) -> MemoryObjectReceiveStream[BatchResult]:
        self._open()  # here, so its errors are raised as they are, not in a group
        send, receive = anyio.create_memory_object_stream[BatchResult](self.concurrency)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._run, send)
        return receive

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self.cancel()  # a no-op once every result has been read
        suppress = await self._task_group.__aexit__(exc_type, exc, tb)
        if self._error is not None and exc is None:
            raise self._error
        return suppress

    def _open(self) -> None:
        if self.stats.started_at is not None:
            raise RuntimeError("a batch runs once; make a new one")
        if self.results_file is not None:
            requests = self._requests
            path = self.results_file.path
            if isinstance(requests, (str, os.PathLike)) and _same_file(requests, path):
                raise OSError(errno.EINVAL, "is the input file: write to another one", path)
            self._done = self.results_file.open(retry_failed=self._retry_failed)
        self.stats.started_at = anyio.current_time()

    async def _run(self, send: MemoryObjectSendStream[BatchResult] | None) -> None:
        self._send = send
        done = self._done
        try:
            with self._running:
                async with anyio.create_task_group() as tg:
                    slots = anyio.Semaphore(self.concurrency)
                    packs = (
                        EmbeddingPacks(self.client.embedding_input_limit) if self._split else None
                    )
                    with self._feeding:
                        for item in unique(self._items()):
                            if self.stats.stopped:  # a failed write: no checkpoint came yet
                                break
                            if item.custom_id in done:
                                self.stats.skipped += 1
                                self.stats.skipped_failed += not done[item.custom_id]
                                continue
                            if isinstance(item, InvalidLine):
                                result = BatchResult(
                                    item.custom_id,
                                    item.line,
                                    None,
                                    error_code="invalid_line",
                                    error=item.reason,
                                )
                                await self._deliver(result)
                                continue
                            if packs is not None and item.embedding:
                                full = packs.add(item)
                                if full:
                                    await self._start_pack(tg, full, slots)
                                continue
                            await slots.acquire()
                            self.stats.running += 1
                            tg.start_soon(self._one, item, slots)
                        if packs is not None:
                            for pack in packs.drain():
                                await self._start_pack(tg, pack, slots)
                    if packs is not None:  # stopped before they were sent
                        self.stats.unfinished += sum(len(p) for p in packs.drain())
        finally:
            self.stats.unfinished += self.stats.running
            self.stats.running = 0
            self.stats.finished_at = anyio.current_time()
            if self.results_file is not None:
                self.results_file.close()
            if send is not None:
                send.close()
        if self._error is not None and send is None:
            raise self._error  # the iterator form raises it on leaving the block

    def _items(self) -> Iterable[BatchRequest | InvalidLine | Mapping[str, Any]]:
        requests = self._requests
        if isinstance(requests, (str, os.PathLike)):
            return read_requests(requests)
        return requests

    async def _start_pack(
        self, tg: anyio.abc.TaskGroup, pack: list[BatchRequest], slots: anyio.Semaphore
    ) -> None:
        await slots.acquire()
        self.stats.running += len(pack)
        tg.start_soon(self._one_pack, pack, slots)

    async def _one_pack(self, pack: list[BatchRequest], slots: anyio.Semaphore) -> None:
        try:
            results = await self._call_pack(pack)
            self.stats.running -= len(pack)
            self.stats.unfinished += len(pack) - len(results)  # left for a resumed run
            if results:
                await self._deliver_all(results)
        finally:
            slots.release()

    async def _call_pack(self, pack: list[BatchRequest]) -> list[BatchResult]:
        """One embedding request for the inputs of every line of ``pack``; each line's
        result holds its own vectors (or the request's error). None of them if the
        request was stopped."""
        inputs: list[Any] = []
        sizes = []
        for request in pack:
            items = line_inputs(request.body.get("input"))
            inputs += items
            sizes.append(len(items))
        first = pack[0]
        body = {k: v for k, v in first.body.items() if k != "input"}
        result = await self._call(attrs.evolve(first, body={**body, "input": inputs}))
        if result is None:
            return []
        if len(pack) > 1 and result.error_code in _REFUSED_AT_SUBMIT:
            return await self._call_each(pack)  # nothing was sent: find the line at fault
        response = result.response
        if not isinstance(response, EmbeddingResponse):  # an error: every line gets it
            return [attrs.evolve(result, custom_id=r.custom_id, line=r.line) for r in pack]
        results, start = [], 0
        for request, size in zip(pack, sizes, strict=True):
            own = attrs.evolve(response, vectors=response.vectors[start : start + size])
            results.append(
                attrs.evolve(result, custom_id=request.custom_id, line=request.line, response=own)
            )
            start += size
        return results

    async def _call_each(self, pack: list[BatchRequest]) -> list[BatchResult]:
        """The lines of ``pack`` sent one by one, together; those stopped are left out."""
        results: list[BatchResult | None] = [None] * len(pack)

        async def one(index: int) -> None:
            results[index] = await self._call(pack[index])

        async with anyio.create_task_group() as tg:
            for index in range(len(pack)):
                tg.start_soon(one, index)
        return [result for result in results if result is not None]

    async def _one(self, request: BatchRequest, slots: anyio.Semaphore) -> None:
        try:
            result = await self._call(request)
            self.stats.running -= 1
            if result is not None:
                await self._deliver(result)
            else:  # not the request's fault: leave it for a resumed run
                self.stats.unfinished += 1
        finally:
            slots.release()

    async def _call(self, request: BatchRequest) -> BatchResult | None:
        if request.embedding:
            return await self._call_embedding(request)
        body = dict(request.body)
        model, messages = body.pop("model"), body.pop("messages")
        if "max_tokens" not in body and "max_completion_tokens" in body:
            # What admission must reserve; and the client sends max_tokens, which
            # OpenAI refuses next to max_completion_tokens: send the one.
            body["max_tokens"] = body.pop("max_completion_tokens")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int):
            max_tokens = self.client.config.default_max_tokens
        base = BatchResult(request.custom_id, request.line, model, max_tokens=max_tokens)
        submit = functools.partial(
            self.client._submit,
            model,
            messages,
            max_tokens=body.pop("max_tokens", None),
            temperature=body.pop("temperature", None),
            priority=request.priority,
            validate=True,
            stream=False,
            timeout=None,
            extra=body,
        )
        return await self._answer(base, submit, lambda job: job.wait(job.deadline))

    async def _call_embedding(self, request: BatchRequest) -> BatchResult | None:
        body = dict(request.body)
        model, embed_input = body.pop("model"), body.pop("input")
        dimensions = body.pop("dimensions", None)
        base = BatchResult(request.custom_id, request.line, model)
        submit = functools.partial(
            self.client._submit_embedding,
            model,
            embed_input,
            dimensions=dimensions,
            priority=request.priority,
            timeout=None,
            kwargs=body,
        )
        return await self._answer(base, submit, lambda job: job.wait_embedding(job.deadline))

    async def _answer(
        self,
        base: BatchResult,
        submit: Callable[[], Awaitable[Job]],
        wait: Callable[[Job], Awaitable[ChatResponse | EmbeddingResponse]],
    ) -> BatchResult | None:
        """``base`` with the answer of the job ``submit`` queues, or with its error;
        None when stop() dropped it from the queue or the client shut down.

        The call in its two steps (queue, then wait) so that stop() can tell
        queued jobs from sent ones.
        """
        try:
            job = await submit()
            with anyio.CancelScope() as scope:
                self._waiting[job] = scope
                if self.stats.stopped:  # stop() came while this one was being submitted
                    scope.cancel()
                try:
                    response = await wait(job)
                finally:
                    del self._waiting[job]
            if scope.cancelled_caught:
                return None  # dropped from the queue by stop()
        except (ShutdownError, QueueFullError):
            self.stop()
            return None
        except GateError as exc:
            status = getattr(exc, "status_code", None)
            return attrs.evolve(
                base, error_code=_error_code(exc), error=str(exc), status_code=status
            )
        return attrs.evolve(base, response=response)

    async def _deliver(self, result: BatchResult) -> None:
        await self._deliver_all([result])

    async def _deliver_all(self, results: list[BatchResult]) -> None:
        """Write ``results`` together (one write), then count and hand out each."""
        if self.results_file is not None:
            try:
                if len(results) == 1:
                    self.results_file.append(results[0].record())
                else:
                    self.results_file.append_all([result.record() for result in results])
            except OSError as exc:
                # Nothing more can be recorded: stop paying for results that would be lost.
                if self._error is None:
                    self._error = exc
                self.cancel()
                self.stats.unfinished += len(results)
                return
        for result in results:
            self.stats.add(result)
            if self._on_result is not None:
                returned = self._on_result(result)
                if inspect.isawaitable(returned):
                    await returned
            if self._send is not None:
                await self._send.send(result)


# Error codes of a request the client refused before sending it.
_REFUSED_AT_SUBMIT = frozenset({"validation", "request_too_large"})


def _same_file(a: str | os.PathLike[str], b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _error_code(exc: BaseException) -> str:
    """``BadRequestError`` -> ``"bad_request"``: a stable code from the class name."""
    name = type(exc).__name__.removesuffix("Error") or "gate"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
