"""`stream_chunks`: the provider's chunks as they come, then the whole response."""

from __future__ import annotations

import anyio
import pytest

from maxllm_gate import (
    BadRequestError,
    QueueFullError,
    RequestTimeoutError,
    SimulatedProvider,
    maxllm_gate,
)
from tests.support import MODEL, make_key


@pytest.mark.anyio
async def test_chunks_carry_the_text_then_finish_reason_and_usage() -> None:
    provider = SimulatedProvider(completion_tokens=8)
    async with maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=provider) as client:
        stream = await client.stream_chunks(MODEL, "hi", max_tokens=100)
        async with stream:
            chunks = [chunk async for chunk in stream]
    assert "".join(c.text for c in chunks) == "lorem " * 8
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert stream.response is not None
    assert stream.response.key_used == "k1"
    assert stream.response.content == "lorem " * 8
    assert stream.response.usage == chunks[-1].usage


@pytest.mark.anyio
async def test_a_stream_refused_by_the_provider_raises_while_iterating() -> None:
    provider = SimulatedProvider()
    provider.inject(BadRequestError("bad", status_code=400))
    async with maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=provider) as client:
        stream = await client.stream_chunks(MODEL, "hi")
        with pytest.raises(BadRequestError):
            async with stream:
                async for _ in stream:
                    pass


@pytest.mark.anyio
async def test_queue_errors_are_raised_before_any_iteration() -> None:
    provider = SimulatedProvider()
    key = make_key("k1", 60, 10_000)
    async with maxllm_gate(keys=[key], provider=provider, max_queue_size=1) as client:
        await client.chat(MODEL, "takes the burst")
        first = await client.stream_chunks(MODEL, "waits")
        with pytest.raises(QueueFullError):
            await client.stream_chunks(MODEL, "no room")
        await first.aclose()


@pytest.mark.anyio
async def test_a_stream_that_cannot_start_before_its_timeout_fails_and_leaves_the_queue() -> None:
    provider = SimulatedProvider()
    async with maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=provider) as client:
        await client.chat(MODEL, "takes the burst", max_tokens=10)
        start = anyio.current_time()
        async with await client.stream_chunks(MODEL, "waits", timeout=0.25) as stream:
            with pytest.raises(RequestTimeoutError, match="cannot start before its timeout"):
                await stream.__anext__()
        assert anyio.current_time() == start  # it would fit in a second: told at once
        assert client.status()["queued"] == 0
        assert client.status()["outstanding"] == 0
