"""Faults inside the client on virtual time: actors that raise, callers that cancel,
and shutdown with a thousand requests queued."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from maxllm_gate import ShutdownError, SimulatedProvider, maxllm_gate
from maxllm_gate.state import MemoryState
from maxllm_gate.state.base import Correction, Learn
from tests.faults.outcomes import assert_settled, send_all
from tests.support import MODEL, make_key

pytestmark = pytest.mark.anyio

KEYS = [make_key("k1", 600, 60_000), make_key("k2", 600, 60_000), make_key("k3", 300, 30_000)]


class FlakyState(MemoryState):
    """Memory state whose chosen operations raise, ``times`` times each, every ``every``
    calls: a bug in the state backend, as seen from the actor that called it."""

    def __init__(self, fail: str, *, times: int, every: int = 7) -> None:
        super().__init__()
        self.fail, self.left, self.every, self.seen = fail, times, every, 0

    def _maybe_raise(self, operation: str) -> None:
        if operation == self.fail and self.left > 0:
            self.seen += 1
            if self.seen % self.every == 0:
                self.left -= 1
                raise RuntimeError(f"injected failure in {operation}")

    async def reserve(self, *args: Any, **kwargs: Any) -> float:
        self._maybe_raise("reserve")
        return await super().reserve(*args, **kwargs)

    async def started(self, *args: Any, **kwargs: Any) -> None:
        self._maybe_raise("started")
        await super().started(*args, **kwargs)

    async def settle(self, key_id: str, model: str, corrections: Sequence[Correction]) -> None:
        if any(isinstance(c, Learn) for c in corrections):  # an answer's settlement
            self._maybe_raise("learn")
        await super().settle(key_id, model, corrections)


@pytest.mark.parametrize(
    ("operation", "who"),
    [
        ("started", "a key actor, before its call"),
        ("learn", "a key actor, after an answer"),
        ("reserve", "the dispatcher"),
    ],
    ids=["key-actor-before-call", "key-actor-after-answer", "dispatcher"],
)
async def test_an_actor_fault_ends_every_request_once_and_resends_nothing(
    operation: str, who: str
) -> None:
    provider = SimulatedProvider(latency=0.3)
    state = FlakyState(operation, times=5)
    async with maxllm_gate(keys=KEYS, provider=provider, state=state) as client:
        outcomes = await send_all(client, 200, within=300, max_tokens=100, spacing=0.01)
        restarts = client._supervisor.restarts
        await assert_settled(client, [provider])
    outcomes.assert_each_ended_once()
    assert len(outcomes.results) == 200, who
    # A fault in a key actor's bookkeeping stays inside its call: the actor carries
    # on, and its other calls in flight are neither cut off nor sent again. Only
    # the dispatcher, which holds no calls, is restarted.
    assert restarts == (5 if operation == "reserve" else 0), who
    assert provider.duplicates == 0, who
    assert sum(provider.sends.values()) == provider.accepted == 200, who


async def test_an_answer_reaches_its_caller_even_if_settling_it_fails() -> None:
    provider = SimulatedProvider(latency=0.3)
    state = FlakyState("learn", times=1, every=1)
    async with maxllm_gate(keys=KEYS[:1], provider=provider, state=state) as client:
        response = await client.chat(MODEL, "hello", max_tokens=10)
        await anyio.sleep(0.01)  # the settling fails right after handing the answer over
        assert client._supervisor.restarts == 0  # the fault stayed inside that call
        assert (await client.chat(MODEL, "again", max_tokens=10)).attempts == 1
    assert response.attempts == 1
    assert provider.accepted == 2
    assert provider.duplicates == 0


async def test_callers_that_cancel_while_queued_or_in_flight_leave_nothing_behind() -> None:
    rng = random.Random(7)
    cancel_at = {i: rng.uniform(0.0, 6.0) for i in range(300) if rng.random() < 0.4}
    provider = SimulatedProvider(latency=2.0, token_accounting="usage")
    keys = [make_key(k.key_id, 120, 30_000, token_accounting="usage") for k in KEYS]
    async with maxllm_gate(keys=keys, provider=provider) as client:
        outcomes = await send_all(
            client, 300, within=600, max_tokens=100, cancel_after=cancel_at.get
        )
        await assert_settled(client, [provider])
        cancelled = outcomes.slots.count("cancelled")
        assert 0 < cancelled <= len(cancel_at)
        assert len(outcomes.results) == 300 - cancelled
        # Queued ones never reached the provider; those in flight were cut, not resent.
        assert len(provider.sends) < 300
        assert provider.duplicates == 0
        # Nothing was refunded twice: after a quiet minute every bucket is exactly full.
        await anyio.sleep(60)
        for key in keys:
            snap = client.capacity()["keys"][key.key_id]["models"][MODEL]
            assert snap["tokens_remaining"] == pytest.approx(snap["tokens_capacity"])
            assert snap["requests_remaining"] == pytest.approx(snap["requests_capacity"])
    assert len(outcomes.slots) == 300
    assert not outcomes.errors


async def test_shutdown_with_a_thousand_requests_queued_ends_each_of_them() -> None:
    provider = SimulatedProvider(latency=0.5)
    client = maxllm_gate(keys=[make_key("k1", 60, 1_000_000)], provider=provider)
    results: list[Any] = []

    async def collect() -> None:
        results.append(await send_all(client, 1000, within=60))

    # Callers in a task group around the client: shutdown() is called from the task
    # that entered the client, at the same level.
    async with anyio.create_task_group() as tg:
        async with client:
            tg.start_soon(collect)
            await anyio.sleep(0.1)
            assert client.status()["queued"] >= 998
            started = anyio.current_time()
            await client.shutdown(timeout=5.0)
            took = anyio.current_time() - started
        with pytest.raises(ShutdownError):
            await client.chat(MODEL, "too late")
    outcomes = results[0]
    outcomes.assert_each_ended_once()
    assert took == pytest.approx(5.0, abs=0.01)  # the timeout, then at once
    # 60 RPM, a burst of 1: about five answered in the five seconds given.
    assert 4 <= len(outcomes.results) <= 7
    assert outcomes.error_types() == {"ShutdownError": 1000 - len(outcomes.results)}
    assert provider.in_flight == 0
    assert provider.duplicates == 0


async def test_shutdown_with_time_enough_drains_a_thousand_queued_requests() -> None:
    provider = SimulatedProvider(latency=0.5)
    client = maxllm_gate(keys=KEYS, provider=provider)
    results: list[Any] = []

    async def collect() -> None:
        results.append(await send_all(client, 1000, within=300, max_tokens=20))

    async with anyio.create_task_group() as tg, client:
        tg.start_soon(collect)
        await anyio.sleep(0.1)
        await client.shutdown(timeout=300.0)
    results[0].assert_each_ended_once()
    assert len(results[0].results) == 1000
    assert provider.rate_limited == 0


async def test_shutdown_fails_calls_still_in_flight_without_resending_them() -> None:
    provider = SimulatedProvider(latency=100.0)
    client = maxllm_gate(keys=KEYS, provider=provider)
    results: list[Any] = []

    async def collect() -> None:
        results.append(await send_all(client, 20, within=60, max_tokens=20))

    async with anyio.create_task_group() as tg, client:
        tg.start_soon(collect)
        await anyio.sleep(1.0)
        assert client.status()["in_flight"] == 20
        await client.shutdown(timeout=2.0)
    outcomes = results[0]
    outcomes.assert_each_ended_once()
    assert outcomes.error_types() == {"ShutdownError": 20}
    assert provider.in_flight == 0
    assert provider.duplicates == 0


async def test_a_key_actor_going_down_is_offered_no_new_call() -> None:
    """Regression: a crashed actor's call group closes a moment after the crash; a
    call started in that moment crashed the dispatcher (seen in bench/soak.py)."""
    async with maxllm_gate(keys=KEYS[:1], provider=SimulatedProvider()) as client:
        actor = client._dispatcher.actors["k1"]
        assert actor.available
        assert actor._calls is not None
        actor._calls.cancel_scope.cancel()  # what a raising call does to the group
        assert not actor.available


class _BodyFailed(Exception):
    pass


async def test_leaving_async_with_on_an_exception_fails_queued_requests_at_once() -> None:
    provider = SimulatedProvider(latency=5.0)
    client = maxllm_gate(keys=[make_key("k1", 60, 1_000_000)], provider=provider)
    errors: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            await client.chat(MODEL, f"request {i}", max_tokens=10)
        except Exception as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        with pytest.raises(_BodyFailed):
            async with client:
                for i in range(51):
                    tg.start_soon(one, i)
                await anyio.sleep(0.1)
                assert client.status()["queued"] == 50  # and one in flight
                virtual = anyio.current_time()
                wall = time.monotonic()
                raise _BodyFailed
        virtual = anyio.current_time() - virtual
        wall = time.monotonic() - wall  # a bound check, not a wait
    assert virtual < 0.5
    assert wall < 0.5
    assert len(errors) == 51
    assert {type(e) for e in errors} == {ShutdownError}
    assert provider.in_flight == 0
    assert provider.duplicates == 0


async def test_leaving_async_with_normally_still_drains() -> None:
    provider = SimulatedProvider(latency=0.5)
    client = maxllm_gate(keys=[make_key("k1", 600, 1_000_000)], provider=provider)
    results: list[Any] = []

    async def one(i: int) -> None:
        results.append(await client.chat(MODEL, f"request {i}", max_tokens=10))

    async with anyio.create_task_group() as tg, client:
        for i in range(50):
            tg.start_soon(one, i)
        await anyio.sleep(0.1)
    assert len(results) == 50
