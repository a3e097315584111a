"""The dispatcher and the supervisor: priority, aging, keys at run time, crashes, shutdown."""

from __future__ import annotations

import functools
from typing import Any

import anyio
import pytest

from maxllm_gate import (
    QueueFullError,
    RateLimitError,
    RequestTimeoutError,
    ShutdownError,
    SimulatedProvider,
    maxllm_gate,
)
from maxllm_gate.actors import KeyActor
from maxllm_gate.state import MemoryState
from tests.support import MODEL, make_key


@pytest.mark.anyio
async def test_under_deferral_high_runs_before_medium_before_low_fifo_within_each() -> None:
    order: list[str] = []
    async with maxllm_gate(
        keys=[make_key("k1", 60, 1_000_000)], provider=SimulatedProvider()
    ) as client:

        async def one(name: str, priority: str) -> None:
            await client.chat(MODEL, name, priority=priority)
            order.append(name)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, f"low{i}", "low")
                await anyio.sleep(0.01)
            for i in range(3):
                tg.start_soon(one, f"medium{i}", "medium")
                await anyio.sleep(0.01)
            for i in range(3):
                tg.start_soon(one, f"high{i}", "high")
                await anyio.sleep(0.01)
    # low0 took the one-request burst at once; the rest waited for the 1/s refill.
    assert order == [
        "low0",
        "high0",
        "high1",
        "high2",
        "medium0",
        "medium1",
        "medium2",
        "low1",
        "low2",
        "low3",
    ]


@pytest.mark.anyio
async def test_a_low_priority_request_is_not_starved_by_a_stream_of_high_ones() -> None:
    aging = 5.0
    async with maxllm_gate(
        keys=[make_key("k1", 60, 1_000_000)], provider=SimulatedProvider(), priority_aging=aging
    ) as client:
        await client.chat(MODEL, "drain the burst")
        served: list[tuple[str, float]] = []  # (name, arrival), in the order they finished
        start = anyio.current_time()

        async def one(priority: str) -> None:
            arrival = anyio.current_time() - start
            await client.chat(MODEL, priority, priority=priority)
            served.append((priority, arrival))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "low")
            for _ in range(60):  # twice as fast as the key serves them
                await anyio.sleep(0.5)
                tg.start_soon(one, "high")
    # The low request competes as if it had arrived 2 * aging later: it goes before
    # every high request that arrived after that, so it is not starved.
    low_at = [name for name, _ in served].index("low")
    assert all(arrival < 2 * aging for _, arrival in served[:low_at])
    assert all(arrival >= 2 * aging for _, arrival in served[low_at + 1 :])


@pytest.mark.anyio
async def test_a_key_added_while_requests_are_deferred_is_used_at_once() -> None:
    provider = SimulatedProvider()
    async with maxllm_gate(keys=[make_key("slow", 6, 1_000_000)], provider=provider) as client:
        used: list[str] = []
        start = anyio.current_time()

        async def one() -> None:
            used.append((await client.chat(MODEL, "hi")).key_used)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
            await anyio.sleep(1.0)
            assert client.status()["queued"] == 19  # 6 RPM: one every 10 s
            key_id = await client.add_key(make_key("fast", 600, 1_000_000))
            assert key_id == "fast"
        makespan = anyio.current_time() - start
    assert used.count("fast") == 19
    assert makespan < 5.0  # vs. 190 s on the slow key alone
    assert provider.rate_limited == 0


@pytest.mark.anyio
async def test_a_removed_key_takes_no_new_work_and_its_queue_moves_to_the_others() -> None:
    keys = [make_key("a", 60, 1_000_000), make_key("b", 60, 1_000_000)]
    async with maxllm_gate(keys=keys, provider=SimulatedProvider(latency=0.5)) as client:
        used: list[str] = []

        async def one() -> None:
            used.append((await client.chat(MODEL, "hi")).key_used)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
            await anyio.sleep(0.1)
            await client.remove_key("a")
        assert "a" not in client.status()["keys"]
    assert used.count("a") == 1  # only the call it had already started
    assert len(used) == 10


@pytest.mark.anyio
async def test_a_crashed_key_actor_is_restarted_and_none_of_its_jobs_are_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug outside any one call (here in a call runner's loop) takes the key's
    actor down: its calls in flight are cut off and queued again."""
    original = KeyActor._runner
    crashes = []

    async def crash_once(self: KeyActor) -> None:
        if self.key_id == "k1" and not crashes:
            await anyio.sleep(0.5)  # the other calls on k1 are in flight meanwhile
            crashes.append(anyio.current_time())
            raise RuntimeError("bug in the actor")
        await original(self)

    monkeypatch.setattr(KeyActor, "_runner", crash_once)
    provider = SimulatedProvider(latency=1.0)
    keys = [make_key("k1", 600, 1_000_000), make_key("k2", 600, 1_000_000)]
    async with maxllm_gate(keys=keys, provider=provider) as client:
        results = []

        async def one(i: int) -> None:
            results.append((i, await client.chat(MODEL, f"hi {i}")))

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        assert client._supervisor.restarts == 1
        assert client.status()["keys"]["k1"]["running"]
        status = client.status()
    assert crashes
    assert sorted(i for i, _ in results) == list(range(40))
    assert status["outstanding"] == 0
    # k1 served again after its restart.
    assert any(r.key_used == "k1" and r.latency > crashes[0] for _, r in results)


@pytest.mark.anyio
async def test_shutdown_lets_requests_in_flight_finish() -> None:
    provider = SimulatedProvider(latency=10.0)
    client = maxllm_gate(keys=[make_key("k1", 600, 1_000_000)], provider=provider)
    await client.start()
    results: list[object] = []

    async def one() -> None:
        results.append(await client.chat(MODEL, "hi"))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
        await anyio.sleep(1.0)
        assert client.status()["in_flight"] == 5
        await client.shutdown(timeout=30)
        assert not client.status()["running"]
    assert len(results) == 5
    with pytest.raises(ShutdownError):
        await client.chat(MODEL, "too late")


@pytest.mark.anyio
async def test_shutdown_fails_what_is_left_after_the_timeout_with_shutdown_error() -> None:
    provider = SimulatedProvider(latency=100.0)
    client = maxllm_gate(keys=[make_key("k1", 60, 1_000_000)], provider=provider)
    await client.start()
    outcomes: list[BaseException | object] = []

    async def one() -> None:
        try:
            outcomes.append(await client.chat(MODEL, "hi"))
        except ShutdownError as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(6):  # one in flight, five queued (60 RPM)
            tg.start_soon(one)
        await anyio.sleep(0.5)
        start = anyio.current_time()
        await client.shutdown(timeout=2.0)
        assert anyio.current_time() - start == pytest.approx(2.0, abs=0.01)
    assert len(outcomes) == 6
    assert all(isinstance(o, ShutdownError) for o in outcomes)
    assert provider.in_flight == 0


@pytest.mark.anyio
async def test_leaving_async_with_drains_and_refuses_submissions_meanwhile() -> None:
    provider = SimulatedProvider(latency=2.0)
    results: list[object] = []
    client = maxllm_gate(keys=[make_key("k1", 600, 1_000_000)], provider=provider)

    async def one() -> None:
        results.append(await client.chat(MODEL, "hi"))

    async with anyio.create_task_group() as tg, client:
        for _ in range(3):
            tg.start_soon(one)
        await anyio.sleep(0.1)
    assert len(results) == 3


class _SlowState(MemoryState):
    """A state backend that answers after a while, as Redis does."""

    async def reserve(self, key_id: str, model: str, cost: Any) -> float:
        await anyio.sleep(0.01)
        return await super().reserve(key_id, model, cost)


@pytest.mark.anyio
async def test_jobs_coming_back_while_the_backend_answers_keep_their_place_and_none_is_lost() -> (
    None
):
    """While the dispatcher awaits a reservation, a 429'd job re-enters the queue ahead of
    the one being admitted: the admitted one must leave the queue, not the head."""
    provider = SimulatedProvider(latency=0.05)
    for _ in range(5):
        provider.inject(RateLimitError("slow down", status_code=429, retry_after=0.02))
    keys = [make_key("k1", 6000, 1_000_000), make_key("k2", 6000, 1_000_000)]
    client = maxllm_gate(keys=keys, provider=provider, state=_SlowState())
    done: list[int] = []

    async def one(i: int) -> None:
        await client.chat(MODEL, f"hi {i}")
        done.append(i)

    with anyio.fail_after(60):  # a lost job would leave its caller waiting forever
        async with client, anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
    assert sorted(done) == list(range(40))
    assert client._supervisor.restarts == 0


@pytest.mark.anyio
async def test_call_runners_are_reused_kept_within_bounds_and_retired_when_idle() -> None:
    async with maxllm_gate(
        keys=[make_key("k1", 10**6, 10**9)], provider=SimulatedProvider(latency=1.0)
    ) as client:
        actor = client._dispatcher.actors["k1"]
        for _ in range(5):  # one call at a time: one runner serves them all
            await client.chat(MODEL, "one by one")
        assert actor.idle_runners == 1

        async def one() -> None:
            await client.chat(MODEL, "at once")

        async with anyio.create_task_group() as tg:  # a burst: one runner per call
            for _ in range(300):
                tg.start_soon(one)
        assert actor.idle_runners == 256  # kept for the next burst, up to the cap

        await anyio.sleep(31)  # idle for longer than the retirement age
        await client.chat(MODEL, "after a pause")
        # The runner that took this call went idle again; the stale ones retired.
        assert actor.idle_runners == 1
        await client.chat(MODEL, "the pool still serves")


@pytest.mark.anyio
async def test_wait_for_room_waits_in_order_instead_of_raising_queue_full() -> None:
    provider = SimulatedProvider(latency=0.1)
    keys = [make_key("k1", 60, 1_000_000)]  # one request a second
    async with maxllm_gate(keys=keys, provider=provider, max_queue_size=3) as client:
        done: list[str] = []

        async def one(name: str, **options: Any) -> None:
            await client.chat(MODEL, name, max_tokens=10, **options)
            done.append(name)

        async with anyio.create_task_group() as tg:
            for i in range(4):  # one in flight, three queued: the queue is full
                tg.start_soon(one, f"plain {i}")
                await anyio.sleep(0.001)
            with pytest.raises(QueueFullError):
                await client.chat(MODEL, "refused", max_tokens=10)
            for i in range(3):
                tg.start_soon(functools.partial(one, f"waiting {i}", wait_for_room=True))
                await anyio.sleep(0.001)
            assert client.status()["queued"] == 3
        assert done == [*(f"plain {i}" for i in range(4)), *(f"waiting {i}" for i in range(3))]
        assert client._dispatcher.queued == 0


@pytest.mark.anyio
async def test_wait_for_room_gives_up_at_the_timeout_and_on_cancel() -> None:
    provider = SimulatedProvider(latency=0.1)
    keys = [make_key("k1", 1, 1_000_000)]  # one request a minute
    client = maxllm_gate(keys=keys, provider=provider, max_queue_size=1)
    async with client, anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(client.chat, MODEL, "a", max_tokens=10))
        await anyio.sleep(0.01)
        tg.start_soon(functools.partial(client.chat, MODEL, "b", max_tokens=10))
        await anyio.sleep(0.01)
        with pytest.raises(RequestTimeoutError, match="waiting for room"):
            await client.chat(MODEL, "c", max_tokens=10, timeout=5, wait_for_room=True)
        with anyio.move_on_after(1):
            await client.chat(MODEL, "d", max_tokens=10, wait_for_room=True)
        assert not client._dispatcher._room_waiters
        assert client.status()["queued"] == 1
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_shutdown_tells_callers_waiting_for_room() -> None:
    provider = SimulatedProvider(latency=0.1)
    client = maxllm_gate(keys=[make_key("k1", 1, 1_000_000)], provider=provider, max_queue_size=1)
    errors: list[Exception] = []

    async def waiting() -> None:
        try:
            await client.chat(MODEL, "c", max_tokens=10, wait_for_room=True)
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg, client:
        tg.start_soon(waiting)  # in flight
        await anyio.sleep(0.01)
        tg.start_soon(waiting)  # queued
        await anyio.sleep(0.01)
        tg.start_soon(waiting)  # waiting for room
        await anyio.sleep(0.01)
        await client.shutdown(0)
    assert [type(e) for e in errors] == [ShutdownError] * 3


@pytest.mark.anyio
async def test_status_counts_the_waiting_requests_by_priority() -> None:
    keys = [make_key("k1", 1, 1_000_000)]  # one request a minute
    async with maxllm_gate(keys=keys, provider=SimulatedProvider()) as client:
        await client.chat(MODEL, "takes the burst")
        async with anyio.create_task_group() as tg:
            for priority in ("low", "high", "low", "medium"):
                tg.start_soon(functools.partial(client.chat, MODEL, "waits", priority=priority))
            await anyio.sleep(0.01)
            assert client.status()["queued_by_priority"] == {"high": 1, "medium": 1, "low": 2}
            assert client._dispatcher.queued_by_priority() == [1, 1, 2]
            tg.cancel_scope.cancel()
