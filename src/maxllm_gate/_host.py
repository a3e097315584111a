"""A home for the actors when the client is not used as ``async with``.

``async with maxllm_gate(...)`` runs the actors in a task group nested in the
caller's task, the structured way. A client that is started on first use and
shut down later from anywhere (``client = maxllm_gate.from_env(); ...;
await client.shutdown()``) has no such scope, so its actors run in a task of
the event loop itself: a trio system task, or an asyncio task the loop owns.
This is the only module that touches a backend directly; the task it starts
catches everything, and ends when :meth:`HostTask.stop` is called or the event
loop closes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import sniffio

from maxllm_gate._logging import get_logger

__all__ = ["HostTask"]

log = get_logger("maxllm_gate.host")


class HostTask:
    """Runs ``body(started, stop)`` in a task owned by the event loop."""

    def __init__(self) -> None:
        self._stop = anyio.Event()
        self._finished = anyio.Event()
        self._started = anyio.Event()
        self._task: Any = None  # asyncio needs a strong reference to its task
        self._error: BaseException | None = None

    async def start(self, body: Callable[[anyio.Event, anyio.Event], Awaitable[None]]) -> None:
        """Start ``body(started, stop)``; returns once it has set ``started``, or
        raises what ``body`` raised before that."""

        async def run() -> None:
            try:
                await body(self._started, self._stop)
            except BaseException as exc:  # a system task must not raise
                if not self._started.is_set():
                    self._error = exc  # start() raises it in the caller
                elif isinstance(exc, anyio.get_cancelled_exc_class()):
                    # The event loop ended without a shutdown(): expected, not an error.
                    log.debug("actor host ended with the event loop")
                else:
                    log.error("actor host stopped", error=exc)
            finally:
                self._started.set()
                self._finished.set()

        if sniffio.current_async_library() == "trio":
            import trio

            trio.lowlevel.spawn_system_task(run, name="maxllm_gate actors")
        else:
            import asyncio

            self._task = asyncio.get_running_loop().create_task(run(), name="maxllm_gate actors")
        await self._started.wait()
        if self._error is not None:
            raise self._error

    async def stop(self) -> None:
        """Ask the body to end and wait until it has."""
        self._stop.set()
        with anyio.CancelScope(shield=True):
            await self._finished.wait()
