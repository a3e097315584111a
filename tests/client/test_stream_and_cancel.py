"""Streaming, and what a caller's cancellation gives back."""

from __future__ import annotations

import anyio
import pytest

from maxllm_gate import RateLimitError, SimulatedProvider, TransientError, maxllm_gate
from tests.support import MODEL, make_key


@pytest.mark.anyio
async def test_chat_stream_yields_deltas_as_they_arrive() -> None:
    provider = SimulatedProvider(latency=1.0, seconds_per_token=0.25, completion_tokens=12)
    async with maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=provider) as client:
        start = anyio.current_time()
        arrivals = []
        async for delta in client.chat_stream(MODEL, "Tell me a story", max_tokens=100):
            arrivals.append((anyio.current_time() - start, delta))
    assert "".join(d for _, d in arrivals) == "lorem " * 12
    assert [t for t, _ in arrivals] == pytest.approx([2.0, 3.0, 4.0])  # 4 tokens a chunk
    assert provider.in_flight == 0


@pytest.mark.anyio
async def test_a_stream_reconciles_its_reservation_with_the_usage_it_reports() -> None:
    provider = SimulatedProvider(completion_tokens=8, token_accounting="usage")
    key = make_key("k1", 600, 6_000, token_accounting="usage")  # a 100-token bucket
    async with maxllm_gate(keys=[key], provider=provider) as client:
        before = client.capacity()["keys"]["k1"]["models"][MODEL]["tokens_remaining"]
        text = [d async for d in client.chat_stream(MODEL, "hi", max_tokens=80)]
        after = client.capacity()["keys"]["k1"]["models"][MODEL]["tokens_remaining"]
    assert "".join(text) == "lorem " * 8
    used = before - after
    assert 8 < used < 20  # the prompt and 8 completion tokens, not the 80 reserved


@pytest.mark.anyio
async def test_a_consumer_that_stops_early_closes_the_upstream_stream() -> None:
    provider = SimulatedProvider(seconds_per_token=1.0, completion_tokens=400)
    async with maxllm_gate(keys=[make_key("k1", 60, 100_000)], provider=provider) as client:
        stream = client.chat_stream(MODEL, "a long story", max_tokens=1000)
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        await anyio.sleep(0.1)
        assert provider.in_flight == 0
        assert client.status()["in_flight"] == 0
        assert client.status()["outstanding"] == 0


@pytest.mark.anyio
async def test_a_stream_whose_first_attempt_fails_is_retried_before_any_text() -> None:
    provider = SimulatedProvider(completion_tokens=4)
    provider.inject(TransientError("overloaded", status_code=529))
    provider.inject(RateLimitError("slow down", status_code=429, retry_after=2.0))
    async with maxllm_gate(keys=[make_key("k1", 600, 100_000)], provider=provider) as client:
        text = "".join([d async for d in client.chat_stream(MODEL, "hi")])
    assert text == "lorem " * 4
    assert provider.stats["k1"].calls == 3


@pytest.mark.anyio
async def test_a_caller_cancelled_while_queued_leaves_the_queue_without_taking_capacity() -> None:
    provider = SimulatedProvider()
    async with maxllm_gate(keys=[make_key("k1", 60, 1_000_000)], provider=provider) as client:
        await client.chat(MODEL, "takes the burst")
        with anyio.move_on_after(0.5):
            await client.chat(MODEL, "gives up")
        assert client.status()["queued"] == 0
        start = anyio.current_time()
        await client.chat(MODEL, "next in line")
        # The abandoned job took nothing: the next one fits as soon as the burst refills.
        expected = 0.5 + client.config.admission_margin
        assert anyio.current_time() - start == pytest.approx(expected, abs=1e-3)
    assert provider.stats["k1"].calls == 2


@pytest.mark.anyio
async def test_a_caller_cancelled_in_flight_gets_its_unused_tokens_back() -> None:
    provider = SimulatedProvider(latency=10.0, token_accounting="usage")
    # 100 tokens/s into a 1000-token bucket
    key = make_key("k1", 600, 6_000, token_accounting="usage", burst_seconds=10)
    async with maxllm_gate(keys=[key], provider=provider) as client:
        with anyio.move_on_after(1.0):
            await client.chat(MODEL, "hi", max_tokens=900)
        await anyio.sleep(0.001)  # let the cancelled call settle
        snapshot = client.capacity()["keys"]["k1"]["models"][MODEL]
        assert client.status()["in_flight"] == 0
    # Only the prompt stays charged (the provider saw it); the 900 reserved for the
    # completion came back. Without the refund, 1000 - 900 - prompt + 100 would be left.
    assert snapshot["tokens_remaining"] > 990


@pytest.mark.anyio
async def test_with_admission_accounting_a_cancelled_call_keeps_its_charge() -> None:
    provider = SimulatedProvider(latency=10.0)
    key = make_key("k1", 600, 6_000, burst_seconds=10)
    async with maxllm_gate(keys=[key], provider=provider) as client:
        with anyio.move_on_after(1.0):
            await client.chat(MODEL, "hi", max_tokens=900)
        snapshot = client.capacity()["keys"]["k1"]["models"][MODEL]
    # The provider charged prompt + max_tokens on admission, so we keep counting it:
    # 1000 - 900 - prompt, plus one second of refill.
    assert 150 < snapshot["tokens_remaining"] < 200
