"""Push one large job through the client: many requests, results as they finish, resumable.

Input is OpenAI's batch format, one JSON object a line::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [...], "max_tokens": 100}}

or the bare body (``{"model": ..., "messages": ...}``), whose id is ``line-<N>``.
Each result is appended to the output file as one whole line as soon as it is
done. Given the same output file again, a batch skips every id the file already
holds, so nothing is paid for twice; a last line cut short by a crash is
dropped first. ::

    async with maxllm_gate.from_env() as client:
        summary = await client.batch("in.jsonl", output="out.jsonl", on_result=print)
        # or, as they finish:
        async with client.batch("in.jsonl", output="out.jsonl") as results:
            async for result in results:
                ...
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import re
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from maxllm_gate.errors import GateError, QueueFullError, ShutdownError
from maxllm_gate.responses import ChatResponse

if TYPE_CHECKING:
    from maxllm_gate.client import maxllm_gate

__all__ = [
    "Batch",
    "BatchRequest",
    "BatchResult",
    "BatchStats",
    "InvalidLine",
    "ResultsFile",
    "parse_request",
    "read_requests",
]

_CHAT_URL = "/v1/chat/completions"
_CALL_FIELDS = ("model", "messages", "max_tokens", "temperature")

OnResult = Callable[["BatchResult"], "Awaitable[None] | None"]


@attrs.frozen(slots=True)
class BatchRequest:
    """One chat request of a batch. ``body`` is the chat completion's body, as sent."""

    custom_id: str
    body: Mapping[str, Any]
    priority: str | None = None
    line: int | None = None

    @property
    def model(self) -> str:
        return str(self.body.get("model"))


@attrs.frozen(slots=True)
class InvalidLine:
    """An input line that is not a request; it becomes an error record with ``reason``."""

    custom_id: str
    line: int | None
    reason: str


@attrs.frozen(slots=True)
class BatchResult:
    """The one outcome of one request: ``response``, or ``error`` (a message and a code).

    `record` is the line written to the output file.
    """

    custom_id: str
    line: int | None
    model: str | None
    response: ChatResponse | None = None
    error_code: str | None = None
    error: str | None = None
    status_code: int | None = None
    max_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.response is not None

    def record(self) -> dict[str, Any]:
        """The output line: OpenAI's batch output fields, plus usage, key, latency."""
        out: dict[str, Any] = {"custom_id": self.custom_id}
        if self.line is not None:
            out["line"] = self.line
        r = self.response
        if r is None:
            out["response"] = None
            out["error"] = {"code": self.error_code, "message": self.error}
            if self.status_code is not None:
                out["error"]["status_code"] = self.status_code
            return out
        usage = r.usage.as_dict() if r.usage is not None else None
        message: dict[str, Any] = {"role": "assistant", "content": r.content}
        if r.tool_calls:
            message["tool_calls"] = list(r.tool_calls)
        body = {
            "id": r.request_id,
            "object": "chat.completion",
            "model": r.model,
            "choices": [{"index": 0, "message": message, "finish_reason": r.finish_reason}],
            "usage": usage,
        }
        out["response"] = {"status_code": 200, "request_id": r.request_id, "body": body}
        out["error"] = None
        out["usage"] = usage
        out["key_id"] = r.key_used
        out["latency"] = round(r.latency, 4)
        out["queue_time"] = round(r.queue_time, 4)
        out["attempts"] = r.attempts
        return out


# -- input ------------------------------------------------------------------------------


def parse_request(data: object, line: int | None = None) -> BatchRequest | InvalidLine:
    """One input object, batch format or bare body, as a request or the reason it is not one.

    Only the line's shape is checked here; the client validates the body itself.
    """
    fallback = f"line-{line}" if line is not None else "request"
    if not isinstance(data, Mapping):
        return InvalidLine(fallback, line, f"expected a JSON object, got {type(data).__name__}")
    custom_id = data.get("custom_id")
    if "body" in data or "custom_id" in data:
        if not isinstance(custom_id, str) or not custom_id:
            return InvalidLine(fallback, line, "custom_id: must be a non-empty string")
        body = data.get("body")
        url = data.get("url", _CHAT_URL)
        if not isinstance(body, Mapping):
            return InvalidLine(custom_id, line, "body: must be a JSON object")
        if data.get("method", "POST") != "POST":
            return InvalidLine(custom_id, line, f"method: must be POST, got {data['method']!r}")
        if not isinstance(url, str) or not url.rstrip("/").endswith("/chat/completions"):
            return InvalidLine(custom_id, line, f"url: only {_CHAT_URL} is supported, got {url!r}")
    else:
        custom_id, body = fallback, data
    priority = data.get("priority", body.get("priority"))
    if not isinstance(body.get("model"), str) or "messages" not in body:
        return InvalidLine(custom_id, line, "body: needs a model (a string) and messages")
    if body.get("stream"):
        return InvalidLine(custom_id, line, "stream: a batch does not stream; leave it out")
    if priority is not None and not isinstance(priority, str):
        return InvalidLine(custom_id, line, "priority: must be high, medium or low")
    body = {k: v for k, v in body.items() if k not in ("priority", "stream")}
    return BatchRequest(custom_id, body, priority, line)


def read_requests(path: str | os.PathLike[str]) -> Iterator[BatchRequest | InvalidLine]:
    """The requests of a JSONL file, lazily, line by line (blank lines skipped).

    A line that is not JSON, or not a request, comes as an `InvalidLine`.

    Raises:
      OSError: the file cannot be read.
    """
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                reason = f"not valid JSON: {exc}"
                yield InvalidLine(f"line-{number}", number, reason)
                continue
            yield parse_request(data, number)


def count_lines(path: str | os.PathLike[str]) -> int:
    """Non-blank lines in ``path``: the requests a run over it will see."""
    with open(path, "rb") as lines:
        return sum(1 for raw in lines if raw.strip())


def _unique(
    items: Iterable[BatchRequest | InvalidLine | Mapping[str, Any]],
) -> Iterator[BatchRequest | InvalidLine]:
    """Parse dicts, and turn a repeated custom_id into an `InvalidLine` named by its line."""
    first_seen: dict[str, int | None] = {}
    for index, item in enumerate(items, start=1):
        if not isinstance(item, (BatchRequest, InvalidLine)):
            item = parse_request(item, index)
        if item.custom_id in first_seen:
            where = item.line if item.line is not None else index
            first = first_seen[item.custom_id]
            seen = f" (first on line {first})" if first is not None else ""
            reason = f"duplicate custom_id {item.custom_id!r}{seen}"
            name, n = f"line-{where}", 1
            while name in first_seen:  # only if an id names another line: stay unique
                n += 1
                name = f"line-{where}-{n}"
            item = InvalidLine(name, item.line, reason)
        first_seen[item.custom_id] = item.line
        yield item


# -- output -----------------------------------------------------------------------------


class ResultsFile:
    """An append-only JSONL file of results that a kill at any moment leaves readable.

    `open` reads the ids already there (dropping a last line cut short by a
    crash) and locks the file against a second writer. `append` writes each
    record as one ``write()`` of a whole line on an ``O_APPEND`` descriptor: no
    buffer in this process, so what is written survives a kill.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None
        self.done: dict[str, bool] = {}  # custom_id -> ok, of the lines already there

    def open(self) -> dict[str, bool]:
        """Open (creating it if needed) and return ``{custom_id: ok}`` of the lines held.

        Raises:
          OSError: the file cannot be opened or read.
          OSError: also when another run is writing to it (``EBUSY``).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _lock(fd, self.path)
            self.done = self._read_and_trim(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self.done

    def _read_and_trim(self, fd: int) -> dict[str, bool]:
        done: dict[str, bool] = {}
        end = 0  # just past the last newline
        with open(fd, "rb", closefd=False) as lines:
            for raw in lines:
                if not raw.endswith(b"\n"):
                    break  # torn by a crash: the request was not recorded
                end += len(raw)
                try:
                    record = json.loads(raw)
                    done[str(record["custom_id"])] = record.get("error") is None
                except (ValueError, KeyError, TypeError):
                    continue  # not ours: keep it, its request (if any) runs again
        if os.fstat(fd).st_size != end:
            os.ftruncate(fd, end)
        return done

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` as one line. Blocking, but a small write to the page cache."""
        if self._fd is None:
            raise RuntimeError("ResultsFile.append before open()")
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        while data:  # a regular file takes it whole; loop only for a short write
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _lock(fd: int, path: str) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(errno.EBUSY, "another run is writing to it", path) from None


# -- running ----------------------------------------------------------------------------


@attrs.define
class ModelUsage:
    """Tokens of one (model, key) over the successful requests of a batch."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    admitted_tokens: int = 0  # prompt + max_tokens: what admission charged


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
            usage = self.usage.setdefault((response.model, response.key_used), ModelUsage())
            usage.requests += 1
            usage.prompt_tokens += response.usage.prompt_tokens
            usage.completion_tokens += response.usage.completion_tokens
            usage.admitted_tokens += response.usage.prompt_tokens + result.max_tokens
            self.prompt_tokens += response.usage.prompt_tokens
            self.completion_tokens += response.usage.completion_tokens


_WAITED = 0.01  # seconds queued that count as held back for capacity (dispatch takes µs)


class Batch:
    """A batch of requests run through a client; make it with ``client.batch(...)``.

    Args:
      client: a started (or startable) client; the batch does not close it.
      requests: a path to a JSONL file, or an iterable of `BatchRequest`\\ s or
        dicts (batch format or bare bodies). Read lazily.
      output: a JSONL file to append results to; ids it holds are skipped.
      concurrency: requests submitted and not yet done, at most (queued or in
        flight); at most the client's ``max_queue_size``.
      on_result: called (and awaited, if it returns an awaitable) with each
        `BatchResult`, after it is written.

    ``await batch`` (or ``await batch.run()``) runs it to the end and returns
    its `BatchStats`. ``async with batch as results`` runs it in the background
    and yields each result as it finishes; leaving the block early cancels the
    requests still running (they are not written, so a resumed run does them).

    A bad input line becomes an error result with its reason, and the batch
    goes on. `stop` stops taking new requests and lets those running finish;
    `cancel` cancels those too. A request that ends because the client shut
    down is not written either.

    Raises (from ``run`` or entering the block):
      OSError: the input or the output file cannot be read or written, or
        another run is writing to the output file (``EBUSY``).
    """

    def __init__(
        self,
        client: maxllm_gate,
        requests: str | os.PathLike[str] | Iterable[BatchRequest | Mapping[str, Any]],
        *,
        output: str | os.PathLike[str] | None = None,
        concurrency: int = 256,
        on_result: OnResult | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.client = client
        self._requests = requests
        self.results_file = ResultsFile(output) if output is not None else None
        self.concurrency = min(concurrency, client.config.max_queue_size)
        self._on_result = on_result
        self.stats = BatchStats()
        self._feeding = anyio.CancelScope()
        self._running = anyio.CancelScope()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._send: MemoryObjectSendStream[BatchResult] | None = None
        self._done: dict[str, bool] = {}

    def stop(self) -> None:
        """Take no new requests; those submitted finish and are written."""
        self.stats.stopped = True
        self._feeding.cancel()

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
        return await self._task_group.__aexit__(exc_type, exc, tb)

    def _open(self) -> None:
        if self.stats.started_at is not None:
            raise RuntimeError("a batch runs once; make a new one")
        self._done = self.results_file.open() if self.results_file is not None else {}
        self.stats.started_at = anyio.current_time()

    async def _run(self, send: MemoryObjectSendStream[BatchResult] | None) -> None:
        self._send = send
        done = self._done
        try:
            with self._running:
                async with anyio.create_task_group() as tg:
                    slots = anyio.Semaphore(self.concurrency)
                    with self._feeding:
                        for item in _unique(self._items()):
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
                            await slots.acquire()
                            self.stats.running += 1
                            tg.start_soon(self._one, item, slots)
        finally:
            self.stats.unfinished += self.stats.running
            self.stats.running = 0
            self.stats.finished_at = anyio.current_time()
            if self.results_file is not None:
                self.results_file.close()
            if send is not None:
                send.close()

    def _items(self) -> Iterable[BatchRequest | InvalidLine | Mapping[str, Any]]:
        requests = self._requests
        if isinstance(requests, (str, os.PathLike)):
            return read_requests(requests)
        return requests

    async def _one(self, request: BatchRequest, slots: anyio.Semaphore) -> None:
        try:
            result = await self._call(request)
            if result is not None:
                self.stats.running -= 1
                await self._deliver(result)
            else:  # not the request's fault: leave it for a resumed run
                self.stats.running -= 1
                self.stats.unfinished += 1
        finally:
            slots.release()

    async def _call(self, request: BatchRequest) -> BatchResult | None:
        body = dict(request.body)
        model, messages = body.pop("model"), body.pop("messages")
        if "max_tokens" not in body and "max_completion_tokens" in body:
            body["max_tokens"] = body["max_completion_tokens"]  # what admission must reserve
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int):
            max_tokens = self.client.config.default_max_tokens
        base = BatchResult(request.custom_id, request.line, model, max_tokens=max_tokens)
        try:
            response = await self.client.chat(model, messages, priority=request.priority, **body)
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
        if self.results_file is not None:
            self.results_file.append(result.record())
        self.stats.add(result)
        if self._on_result is not None:
            returned = self._on_result(result)
            if inspect.isawaitable(returned):
                await returned
        if self._send is not None:
            await self._send.send(result)


def _error_code(exc: BaseException) -> str:
    """``BadRequestError`` -> ``"bad_request"``: a stable code from the class name."""
    name = type(exc).__name__.removesuffix("Error") or "gate"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
