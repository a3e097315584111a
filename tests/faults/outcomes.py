"""Send many requests at once and check that each one ends exactly once.

Every fault test asks the same question: did every submitted request end in
exactly one result or one clear error (a :class:`~maxllm_gate.errors.GateError`),
within a bound, with nothing left queued or in flight? :func:`send_all` answers
it and :func:`assert_settled` checks what the client and provider hold afterwards.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import attrs

from maxllm_gate import GateError, SimulatedProvider, maxllm_gate
from maxllm_gate.responses import ChatResponse
from tests.support import MODEL, expose

_UNSET = object()


@attrs.define
class Outcomes:
    """One slot per request: a `ChatResponse`, or the exception it raised."""

    slots: list[Any]
    ended_twice: int = 0

    @property
    def results(self) -> list[ChatResponse]:
        return [s for s in self.slots if isinstance(s, ChatResponse)]

    @property
    def errors(self) -> list[GateError]:
        return [s for s in self.slots if isinstance(s, GateError)]

    def error_types(self) -> collections.Counter[str]:
        return collections.Counter(type(e).__name__ for e in self.errors)

    def assert_each_ended_once(self) -> None:
        """Every slot holds a result or a GateError; none ended twice, none never ended."""
        assert self.ended_twice == 0
        unended = sum(1 for s in self.slots if s is _UNSET)
        foreign = [
            s for s in self.slots if isinstance(s, BaseException) and not isinstance(s, GateError)
        ]
        assert unended == 0, f"{unended} requests never ended"
        assert not foreign, f"errors outside the library's hierarchy: {foreign[:3]!r}"


async def send_all(
    client: maxllm_gate,
    count: int,
    *,
    within: float,
    model: str = MODEL,
    spacing: float = 0.0,
    cancel_after: Callable[[int], float | None] = lambda i: None,
    **chat: Any,
) -> Outcomes:
    """Send ``count`` requests (``spacing`` seconds apart), each with a prompt of its own.

    ``cancel_after(i)`` gives the seconds after which request ``i``'s caller
    cancels it (None: never); a cancelled request's slot holds ``"cancelled"``.
    Fails if they have not all ended after ``within`` seconds: no hangs.
    """
    outcomes = Outcomes([_UNSET] * count)

    def settle(i: int, value: Any) -> None:
        if outcomes.slots[i] is not _UNSET:
            outcomes.ended_twice += 1
        outcomes.slots[i] = value

    async def one(i: int) -> None:
        deadline = cancel_after(i)
        with anyio.move_on_after(math.inf if deadline is None else deadline) as scope:
            try:
                settle(i, await client.chat(model, f"request {i}: say something", **chat))
            except Exception as exc:  # anything else than GateError fails the test
                settle(i, exc)
        if scope.cancelled_caught:
            settle(i, "cancelled")

    with anyio.fail_after(within):
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
                if spacing:
                    await anyio.sleep(spacing)
    expose(*outcomes.errors)
    return outcomes


async def assert_settled(client: maxllm_gate, providers: Sequence[SimulatedProvider] = ()) -> None:
    """Nothing queued, in flight or outstanding in the client or the providers.

    Waits a moment first: an abandoned call settles in its key actor's task,
    right after its caller gave up."""
    await anyio.sleep(0.01)
    status = client.status()
    expose(client, status, client.capacity(), client.scores(), client.latency())
    assert status["queued"] == 0, status
    assert status["in_flight"] == 0, status
    assert status["outstanding"] == 0, status
    for provider in providers:
        assert provider.in_flight == 0
