"""The supervisor: the one task group that owns the dispatcher and every key actor.

Inbox: :meth:`Supervisor.add` and :meth:`Supervisor.remove` (keys come and go at
run time) and :meth:`Supervisor.shutdown`.
Owns: the task group in which every actor runs; nothing outlives it.
On a crash: an actor whose task raises is restarted with exponential backoff
(``restart_base`` doubling up to ``restart_max``, reset after a minute of good
health); the log names the root cause, with its traceback. A bug in one call's
bookkeeping does not crash its key actor: that call alone is settled (see
:meth:`KeyActor._call_crashed`). A crashed key actor's cut-off calls are
re-queued at their old place in line, so no job is lost; a stream that had
already sent text fails instead, since repeating it would duplicate what the
caller read.
On cancellation: every actor is cancelled with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType

import anyio
import anyio.abc

from maxllm_gate._logging import get_logger
from maxllm_gate.actors.dispatcher import Dispatcher
from maxllm_gate.actors.key_actor import KeyActor
from maxllm_gate.errors import ShutdownError, TransientError

__all__ = ["Supervisor"]

log = get_logger("maxllm_gate.actors.supervisor")

_HEALTHY_AFTER = 60.0  # seconds up after which the restart backoff starts over


class Supervisor:
    """Runs the dispatcher and the key actors, restarts them, and shuts them down."""

    def __init__(
        self, dispatcher: Dispatcher, *, restart_base: float = 0.1, restart_max: float = 30.0
    ) -> None:
        self.dispatcher = dispatcher
        self.restart_base = restart_base
        self.restart_max = restart_max
        self.restarts = 0
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Supervisor:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self._supervise, "dispatcher", self.dispatcher.run, lambda: None)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None
            error = ShutdownError("the client shut down before the request finished")
            self.dispatcher.fail_queued(error)
            for actor in self.dispatcher.actors.values():
                for job in actor.take_in_flight():
                    job.fail(error)

    async def add(self, actor: KeyActor) -> None:
        """Start supervising ``actor``; returns once it runs and takes calls."""
        if self._tg is None:
            raise ShutdownError("the client is not running")
        self.dispatcher.add_actor(actor)
        await self._tg.start(
            self._supervise, f"key {actor.key_id}", actor.run, lambda: self._recover(actor)
        )

    def remove(self, key_id: str) -> KeyActor | None:
        """Stop routing to ``key_id``; its calls in flight finish normally."""
        actor = self.dispatcher.remove_actor(key_id)
        if actor is not None:
            actor.stop()
        return actor

    async def shutdown(self, timeout: float) -> None:
        """Stop taking requests, wait up to ``timeout`` s for the rest, fail what remains.

        Every request still queued or running when the timeout passes fails
        with :class:`ShutdownError`.
        """
        self.dispatcher.close()
        with anyio.move_on_after(timeout):
            await self.dispatcher.wait_drained()
            # Answered requests may still be settling (refunds, header sync): let
            # the actors finish those before the task group is cancelled.
            for actor in self.dispatcher.actors.values():
                actor.stop()
            for actor in self.dispatcher.actors.values():
                await actor.stopped.wait()
        if self.dispatcher.outstanding:
            log.warning("shutdown timeout passed", unfinished=self.dispatcher.outstanding)

    async def _supervise(
        self,
        name: str,
        run: Callable[..., Awaitable[None]],
        recover: Callable[[], None],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        delay = self.restart_base
        status = _StartedOnce(task_status)  # a crash before it starts is retried too
        while True:
            started = anyio.current_time()
            try:
                await run(task_status=status)
                return
            except Exception as exc:
                self.restarts += 1
                if anyio.current_time() - started > _HEALTHY_AFTER:
                    delay = self.restart_base
                log.error("actor crashed; restarting", actor=name, delay=delay, exc=exc)
                recover()
                await anyio.sleep_until(anyio.current_time() + delay)
                delay = min(delay * 2, self.restart_max)

    def _recover(self, actor: KeyActor) -> None:
        for job in actor.take_in_flight():
            if job.streamed:
                job.fail(TransientError("the stream was cut off", key_id=actor.key_id))
            else:
                self.dispatcher.requeue(job)


class _StartedOnce:
    """Passes on the first ``started()`` only: restarts report nothing."""

    def __init__(self, inner: anyio.abc.TaskStatus[None]) -> None:
        self._inner: anyio.abc.TaskStatus[None] | None = inner

    def started(self, value: None = None) -> None:
        if self._inner is not None:
            inner, self._inner = self._inner, None
            inner.started(value)
