"""Key actors take turns with a transport that works before it sends (LiteLLM's way)."""

from __future__ import annotations

import itertools

import anyio
import pytest

from maxllm_gate import SimulatedProvider, maxllm_gate
from maxllm_gate.providers.base import ProviderCall, ProviderResponse
from maxllm_gate.providers.turns import SendTurns
from tests.support import MODEL, make_key

WORK = 0.009  # LiteLLM's CPU per call before the request leaves


class _WorksBeforeSending(SimulatedProvider):
    """Spends `WORK` on each call, then reports the send; at most one at a time, as
    CPU-bound work on one core would be, or the calls overlap and leave together."""

    def __init__(self) -> None:
        super().__init__()
        self.send_turns = SendTurns()
        self.working = 0
        self.most_working = 0
        self.departures: list[tuple[float, str]] = []

    async def complete(self, call: ProviderCall) -> ProviderResponse:
        self.working += 1
        self.most_working = max(self.most_working, self.working)
        try:
            await anyio.sleep(WORK)
        finally:
            self.working -= 1
        self.departures.append((anyio.current_time(), call.key_id))
        assert call.on_sent is not None
        call.on_sent(anyio.current_time())
        call.on_sent(anyio.current_time())  # a transport may say it twice: the turn ends once
        return await super().complete(call)


@pytest.mark.anyio
async def test_a_burst_leaves_one_call_at_a_time_with_every_key_in_rotation() -> None:
    provider = _WorksBeforeSending()
    keys = [make_key(f"k{i}", 6_000, 10_000_000) for i in range(3)]
    async with (
        maxllm_gate(keys=keys, provider=provider) as client,
        anyio.create_task_group() as group,
    ):
        for n in range(60):
            group.start_soon(client.chat, MODEL, f"request {n}")
    assert provider.most_working == 1
    assert len(provider.departures) == 60
    # No key pauses for longer than a round of the three: its provider's bucket
    # never sits idle behind another key's burst.
    for key in ("k0", "k1", "k2"):
        times = [at for at, key_id in provider.departures if key_id == key]
        assert max(b - a for a, b in itertools.pairwise(times)) < 4 * WORK


@pytest.mark.anyio
async def test_a_call_that_fails_before_it_sends_gives_its_turn_back() -> None:
    class _FailsFirst(_WorksBeforeSending):
        failed = False

        async def complete(self, call: ProviderCall) -> ProviderResponse:
            if not self.failed:
                self.failed = True
                raise RuntimeError("a transport bug, before the send")
            return await super().complete(call)

    provider = _FailsFirst()
    async with maxllm_gate(keys=[make_key("k0", 6_000, 10_000_000)], provider=provider) as client:
        with anyio.fail_after(5):
            response = await client.chat(MODEL, "hello")
    assert response.attempts == 2  # the bug was a transient error, retried in a new turn


class _SendsLate(SimulatedProvider):
    """Reports each send ``late`` seconds into the call, after a report at
    ``give_up`` ("not sooner"): LiteLLM's first calls under trio."""

    def __init__(self, late: float, give_up: float) -> None:
        super().__init__(burst_window=10, send_headers=False)  # no headers to learn it from
        self.send_turns = SendTurns()
        self.late, self.give_up = late, give_up

    async def complete(self, call: ProviderCall) -> ProviderResponse:
        assert call.on_sent is not None
        began = anyio.current_time()
        await anyio.sleep(self.give_up)
        call.on_sent(anyio.current_time())
        await anyio.sleep(self.late - self.give_up)
        call.on_sent(began + self.late)
        return await super().complete(call)


@pytest.mark.anyio
async def test_a_call_that_left_late_moves_its_charge_to_when_it_left() -> None:
    # 1 request a second, 10 of burst. The provider's bucket refilled until the call
    # arrived 2 s late, full all along: its charge began then, and so must ours.
    provider = _SendsLate(late=2.0, give_up=0.05)
    key = make_key("k0", 60, 10_000_000, burst_seconds=10)
    async with maxllm_gate(keys=[key], provider=provider) as client:
        await client.chat(MODEL, "hello")
        remaining = client.capacity()["keys"]["k0"]["models"][MODEL]["requests_remaining"]
    # Charged at the send, just now: 9 left. Charged at the admission, 2 s ago, our
    # bucket would read 10 (full again) where the provider's holds 9.
    assert remaining == pytest.approx(9.0, abs=0.01)
