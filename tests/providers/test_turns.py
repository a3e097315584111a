"""Send turns: one call at a time, keys in rotation, each key's calls in order."""

from __future__ import annotations

import anyio
import pytest

from maxllm_gate.providers.turns import SendTurns

pytestmark = pytest.mark.anyio


class _Calls:
    """Calls that queue for turns one by one, behind a turn held by "holder"."""

    def __init__(self, turns: SendTurns) -> None:
        self.turns = turns
        self.served: list[tuple[str, int]] = []

    async def call(self, key: str, order: int, scope: anyio.CancelScope | None = None) -> None:
        with scope or anyio.CancelScope():
            await self.turns.take(key, order)
            try:
                self.served.append((key, order))
                await anyio.sleep(0.001)  # the transport's work, until the request leaves
            finally:
                self.turns.give_back()

    async def run(self, calls: list[tuple[str, int]]) -> list[tuple[str, int]]:
        await self.turns.take("holder", 0)
        async with anyio.create_task_group() as group:
            for key, order in calls:
                group.start_soon(self.call, key, order)
                await anyio.wait_all_tasks_blocked()  # it waits: queued in this order
            self.turns.give_back()
        return self.served


async def test_one_key_goes_in_order_whatever_the_arrival() -> None:
    served = await _Calls(SendTurns()).run([("a", 3), ("a", 1), ("a", 2)])
    assert served == [("a", 1), ("a", 2), ("a", 3)]


async def test_keys_take_turns_so_no_key_pauses_behind_anothers_burst() -> None:
    # Key a's burst was queued first; b's and c's calls still interleave with it.
    calls = [("a", n) for n in range(4)] + [("b", 10 + n) for n in range(2)] + [("c", 20)]
    served = await _Calls(SendTurns()).run(calls)
    assert served == [("a", 0), ("b", 10), ("c", 20), ("a", 1), ("b", 11), ("a", 2), ("a", 3)]


async def test_the_key_idle_longest_goes_first() -> None:
    turns = SendTurns()
    await _Calls(turns).run([("a", 0), ("b", 0)])  # a's last turn is older than b's
    served = await _Calls(turns).run([("b", 1), ("a", 1)])
    assert served == [("a", 1), ("b", 1)]


async def test_a_waiter_cancelled_while_it_waits_is_skipped() -> None:
    turns = SendTurns()
    calls = _Calls(turns)
    await turns.take("holder", 0)
    doomed = anyio.CancelScope()
    async with anyio.create_task_group() as group:
        group.start_soon(calls.call, "b", 0, doomed)
        group.start_soon(calls.call, "c", 0)
        await anyio.wait_all_tasks_blocked()
        doomed.cancel()
        await anyio.wait_all_tasks_blocked()
        turns.give_back()
    assert calls.served == [("c", 0)]
    with anyio.fail_after(1):
        await turns.take("d", 0)  # free again
    turns.give_back()


async def test_a_waiter_cancelled_as_it_is_handed_the_turn_passes_it_on() -> None:
    turns = SendTurns()
    calls = _Calls(turns)
    await turns.take("holder", 0)
    doomed = anyio.CancelScope()
    async with anyio.create_task_group() as group:
        group.start_soon(calls.call, "b", 0, doomed)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(calls.call, "c", 0)
        await anyio.wait_all_tasks_blocked()
        turns.give_back()  # hands the turn to b ...
        doomed.cancel()  # ... which is cancelled before (or as) it runs: c gets it next
    assert calls.served[-1] == ("c", 0)
