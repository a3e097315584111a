"""A private asyncio event loop in a daemon thread, for asyncio-only libraries called from trio.

LiteLLM only runs under asyncio. Under trio, `AsyncioThread` runs its
coroutines as tasks on one event loop of its own, in one thread shared by
every call, and hands the outcomes back without blocking a thread per call:
the task's done-callback wakes the waiting trio task through its trio token.
Cancelling the trio caller cancels the asyncio task, and waits (briefly) for it
to unwind, so a connection is closed by the time the call returns.

This is the one module that uses asyncio's and trio's own APIs directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, TypeVar

import anyio
import outcome
import sniffio
import trio

__all__ = ["AsyncioThread", "BridgedIterator", "host_caller"]

T = TypeVar("T")

#: Seconds a cancelled call may take to unwind on the loop before we stop waiting for it.
CANCEL_GRACE = 2.0
#: Chunks a stream reads ahead of its trio consumer before it waits for room.
STREAM_BUFFER = 16


class AsyncioThread:
    """One asyncio event loop in a daemon thread, started on first use.

    ``await thread.run(make)`` runs the coroutine ``make()`` as a task on that
    loop and returns (or raises) what it returns (or raises). Must be called
    from trio. `aclose` cancels whatever still runs there and stops the thread;
    the next `run` starts a new one. ``on_stop()``, if given, runs on the loop
    last, after its tasks ended (to close what a library cached for that loop).
    """

    def __init__(
        self,
        name: str = "maxllm_gate-asyncio",
        *,
        on_stop: Callable[[], Coroutine[Any, Any, object]] | None = None,
    ) -> None:
        self._name = name
        self._on_stop = on_stop
        self._lock = threading.Lock()  # trio runs in other threads may share us
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._loop is not None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                # No wait for the thread: call_soon_threadsafe queues until run_forever starts.
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=_serve, args=(loop,), name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def run(
        self,
        make: Callable[[], Coroutine[Any, Any, T]],
        *,
        discard: Callable[[T], Coroutine[Any, Any, object]] | None = None,
    ) -> T:
        """Run ``make()`` on the loop and return its result, or raise its exception.

        ``make`` is called on the loop's thread. On cancellation the asyncio
        task is cancelled, and this waits up to `CANCEL_GRACE` seconds
        (shielded) for it to end before re-raising the cancellation. A result
        the task produced anyway is handed to ``discard`` (run on the loop,
        within the same grace), so a resource it holds, such as an open
        stream, is not leaked.
        """
        loop = self._running_loop()
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        results: list[outcome.Outcome[T]] = []
        tasks: list[asyncio.Task[T]] = []

        def deliver(result: outcome.Outcome[T]) -> None:  # on the trio thread
            results.append(result)
            done.set()

        def report(result: outcome.Outcome[T]) -> None:  # on the loop's thread
            with contextlib.suppress(trio.RunFinishedError):  # no one is waiting any more
                token.run_sync_soon(deliver, result)

        def start() -> None:  # on the loop's thread
            try:
                task = loop.create_task(make())
            except BaseException as exc:
                report(outcome.Error(exc))
                return
            tasks.append(task)
            task.add_done_callback(lambda t: report(_outcome_of(t)))

        def cancel() -> None:  # on the loop's thread, always after start (FIFO)
            for task in tasks:
                task.cancel()

        loop.call_soon_threadsafe(start, context=_asyncio_context())
        try:
            await done.wait()
        except BaseException:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(cancel)
            with trio.move_on_after(CANCEL_GRACE, shield=True):
                await done.wait()
                if discard is not None and results and isinstance(results[0], outcome.Value):
                    with contextlib.suppress(Exception):  # best effort: we are cancelled anyway
                        await self.run(functools.partial(discard, results[0].value))
            raise
        return results[0].unwrap()

    def iterate(self, source: Any, *, buffer: int = STREAM_BUFFER) -> BridgedIterator[Any]:
        """Iterate the asyncio async iterator ``source`` from trio (see `BridgedIterator`)."""
        return BridgedIterator(self, source, buffer)

    async def aclose(self) -> None:
        """Cancel the tasks left on the loop, stop it and wait for its thread to end.

        Does nothing if the loop never started. Safe from any backend.
        """
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        stopping: list[asyncio.Task[None]] = []  # a strong reference: asyncio keeps weak ones

        def stop() -> None:
            stopping.append(loop.create_task(_stop(loop, self._on_stop)))

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop, context=contextvars.Context())
        await anyio.to_thread.run_sync(thread.join, abandon_on_cancel=True)


def host_caller() -> Callable[[Callable[[], object]], None]:
    """A function that runs a callback soon on the calling task's event loop (asyncio's
    or trio's), from any thread, without waiting for it. Call this on that loop."""
    if sniffio.current_async_library() == "trio":
        token = trio.lowlevel.current_trio_token()

        def call_soon(callback: Callable[[], object]) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # no one is waiting any more
                token.run_sync_soon(callback)

        return call_soon
    loop = asyncio.get_running_loop()

    def call_soon_on_loop(callback: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(callback)

    return call_soon_on_loop


def _asyncio_context() -> contextvars.Context:
    """The caller's context (log fields etc.), minus anyio's mark that trio is running.

    Left in, it makes anyio (inside the openai SDK) take the loop's tasks for trio ones.
    """
    context = contextvars.copy_context()
    context.run(sniffio.current_async_library_cvar.set, None)
    return context


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


async def _stop(
    loop: asyncio.AbstractEventLoop, on_stop: Callable[[], Coroutine[Any, Any, object]] | None
) -> None:
    try:
        others = [task for task in asyncio.all_tasks(loop) if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if on_stop is not None:
            with contextlib.suppress(Exception):  # best effort: the loop goes away regardless
                await asyncio.wait_for(on_stop(), CANCEL_GRACE)
    finally:
        loop.stop()


def _outcome_of(task: asyncio.Task[T]) -> outcome.Outcome[T]:
    if task.cancelled():
        # Not by our caller (whose own cancellation wins): the loop is shutting down.
        return outcome.Error(RuntimeError("the asyncio loop thread was stopped"))
    error = task.exception()
    return outcome.Value(task.result()) if error is None else outcome.Error(error)


_END = object()


class BridgedIterator(Generic[T]):
    """An asyncio async iterator, read on the loop's thread and consumed from trio.

    A pump task on the loop, started by the first ``__anext__``, reads
    ``source`` into a queue of at most ``buffer`` items, and waits for room
    when the trio consumer is slow. Each round trip to the loop fetches every
    item queued (at least one), so at most ``2 * buffer + 1`` items are ever
    read ahead of the consumer. `aclose` stops the pump and closes ``source``
    (its ``aclose``), once.
    """

    def __init__(self, thread: AsyncioThread, source: AsyncIterator[T], buffer: int) -> None:
        self._thread = thread
        self._source = source
        self._ready: deque[object] = deque()
        self._queue: asyncio.Queue[object] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._buffer = buffer
        self._closed = False

    def __aiter__(self) -> BridgedIterator[T]:
        return self

    async def __anext__(self) -> T:
        if not self._ready:
            if self._closed:
                raise StopAsyncIteration
            self._ready.extend(await self._thread.run(self._take))
        item = self._ready.popleft()
        if item is _END:
            self._closed = True
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            self._closed = True
            raise item.error
        return item  # type: ignore[return-value]

    async def aclose(self) -> None:
        """Stop reading and close the source. Idempotent; shielded from cancellation."""
        if self._pump is None and self._closed:
            return
        self._closed = True
        self._ready.clear()
        with anyio.CancelScope(shield=True):
            await self._thread.run(self._close)

    # -- on the loop's thread ----------------------------------------------------------

    async def _take(self) -> list[object]:
        if self._queue is None:
            self._queue = asyncio.Queue(self._buffer)
            self._pump = asyncio.get_running_loop().create_task(self._read(self._queue))
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    async def _read(self, queue: asyncio.Queue[object]) -> None:
        try:
            async for item in self._source:
                await queue.put(item)
        except Exception as exc:
            await queue.put(_Failure(exc))
        else:
            await queue.put(_END)

    async def _close(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        close = getattr(self._source, "aclose", None)
        if close is not None:
            await close()


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error
