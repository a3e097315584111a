"""The native transport end to end: the client, over real sockets, against the fake provider.

Real sockets need the real clock, so this module runs on plain asyncio and trio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from maxllm_gate import KeyConfig, TransientError, maxllm_gate
from maxllm_gate.providers.base import ProviderCall
from maxllm_gate.providers.openai_compat import OpenAICompatProvider
from maxllm_gate.testing.fake_provider import FakeProvider

MODEL = "gpt-4o-mini"
KEY_1 = "sk-e2e-first-0123456789"
KEY_2 = "sk-e2e-second-0123456789"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    limits = {KEY_1: {MODEL: (600.0, 100_000.0)}, KEY_2: {MODEL: (600.0, 100_000.0)}}
    async with FakeProvider(limits=limits, completion_tokens=8).running() as fake:
        yield fake


def key(fake: FakeProvider, api_key: str, key_id: str, rpm: int = 600) -> KeyConfig:
    return KeyConfig(
        api_key=api_key,
        provider="openai",
        key_id=key_id,
        api_base=fake.url,
        models={MODEL: {"rpm_limit": rpm, "tpm_limit": 100_000}},
    )


async def until_idle(fake: FakeProvider, api_key: str) -> None:
    """Wait (up to 5 s) until the fake provider has no call of ``api_key`` in flight."""
    for _ in range(500):
        if not fake.stats_for(api_key)["in_flight"]:
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"still in flight: {fake.stats_for(api_key)}")


def client(*keys: KeyConfig, **settings: Any) -> maxllm_gate:
    return maxllm_gate(keys=list(keys), provider=OpenAICompatProvider(), **settings)


@pytest.mark.anyio
async def test_chat_and_chat_stream_go_through_the_native_transport(fake: FakeProvider) -> None:
    async with client(key(fake, KEY_1, "k1")) as gate:
        response = await gate.chat(MODEL, "Hello!", max_tokens=20)
        text = "".join([d async for d in gate.chat_stream(MODEL, "Hello!", max_tokens=20)])
    assert response.content == "lorem " * 8
    assert response.finish_reason == "stop"
    assert response.usage is not None and response.usage.completion_tokens == 8
    assert response.key_used == "k1"
    assert text == "lorem " * 8
    stats = fake.stats_for(KEY_1)
    assert stats["accepted"] == 2 and stats["in_flight"] == 0
    assert fake.rate_limited == 0


@pytest.mark.anyio
async def test_the_fake_providers_429s_never_reach_the_caller() -> None:
    # The key claims 6000 RPM; the provider enforces 600 with a 0.1 s burst: one call.
    async with (
        FakeProvider(
            limits={KEY_1: {MODEL: (600.0, 1_000_000.0)}}, burst_window=0.1
        ).running() as fake,
        client(key(fake, KEY_1, "k1", rpm=6000)) as gate,
    ):
        results = []

        async def one() -> None:
            results.append(await gate.chat(MODEL, "hi", max_tokens=10))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
        status = gate.status()
    assert len(results) == 4 and all(r.content for r in results)
    assert fake.rate_limited >= 1  # the provider did refuse calls ...
    assert status["keys"]["k1"]["rate_limited"] == fake.rate_limited  # ... and all were absorbed
    assert fake.accepted == 4


@pytest.mark.anyio
async def test_an_injected_429_with_retry_after_is_absorbed(fake: FakeProvider) -> None:
    fake.inject(429, headers={"retry-after-ms": "50"})
    async with client(key(fake, KEY_1, "k1")) as gate:
        response = await gate.chat(MODEL, "hi", max_tokens=10)
    assert response.attempts == 2
    assert fake.stats_for(KEY_1)["faults"] == 1


@pytest.mark.anyio
async def test_a_revoked_key_is_disabled_and_its_calls_rerouted(fake: FakeProvider) -> None:
    fake.revoke(KEY_1)
    keys = (key(fake, KEY_1, "k1"), key(fake, KEY_2, "k2"))
    async with client(*keys, strategy="round_robin") as gate:
        responses = [await gate.chat(MODEL, f"hi {i}", max_tokens=10) for i in range(4)]
        status = gate.status()
    assert {r.key_used for r in responses} == {"k2"}
    assert fake.stats_for(KEY_1)["faults"] >= 1
    assert status["keys"]["k1"]["enabled"] is False
    assert fake.stats_for(KEY_2)["accepted"] == 4


@pytest.mark.anyio
async def test_a_stream_stopped_midway_ends_the_call_at_the_provider() -> None:
    limits = {KEY_1: {MODEL: (600.0, 100_000.0)}}
    async with (
        FakeProvider(
            limits=limits, seconds_per_token=0.005, completion_tokens=2000
        ).running() as fake,
        client(key(fake, KEY_1, "k1")) as gate,
    ):
        stream = gate.chat_stream(MODEL, "a long story", max_tokens=4000)
        received = []
        async for delta in stream:
            received.append(delta)
            if len(received) == 3:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        await until_idle(fake, KEY_1)
        assert gate.status()["in_flight"] == 0
    assert len(received) == 3
    assert 0 < fake.stats_for(KEY_1)["completion_tokens"] < 2000


@pytest.mark.anyio
async def test_a_cancelled_caller_ends_the_call_at_the_provider() -> None:
    limits = {KEY_1: {MODEL: (600.0, 100_000.0)}}
    async with FakeProvider(limits=limits, latency=30.0).running() as fake:
        async with client(key(fake, KEY_1, "k1")) as gate:
            with anyio.move_on_after(0.2):
                await gate.chat(MODEL, "never answered", max_tokens=10)
            await until_idle(fake, KEY_1)
        assert fake.stats_for(KEY_1)["accepted"] == 1


@pytest.mark.anyio
async def test_the_provider_reads_rate_limit_headers_and_reuses_its_connection(
    fake: FakeProvider,
) -> None:
    provider = OpenAICompatProvider()
    call = ProviderCall(
        key=key(fake, KEY_1, "k1"),
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        params={"max_tokens": 10, "temperature": 0.0},
        request_id="r1",
    )
    try:
        response = await provider.complete(call)
        stream = await provider.open_stream(call)
        chunks = [chunk async for chunk in stream]
        await stream.aclose()
        response_again = await provider.complete(call)
    finally:
        await provider.aclose()
    assert response.headers["x-ratelimit-limit-requests"] == "600"
    assert response_again.content == response.content
    assert stream.headers["x-ratelimit-limit-tokens"] == "100000"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    assert fake.connections == 1  # the stream read to its end left the connection reusable


@pytest.mark.anyio
async def test_a_server_that_is_gone_is_a_transient_error() -> None:
    async with FakeProvider().running() as fake:
        url = fake.url
    provider = OpenAICompatProvider(timeout=5.0)
    gone = KeyConfig(
        api_key=KEY_1,
        provider="openai",
        api_base=url,
        models={MODEL: {"rpm_limit": 1, "tpm_limit": 100}},
    )
    call = ProviderCall(key=gone, model=MODEL, messages=[], params={}, request_id="r")
    try:
        with pytest.raises(TransientError, match="ConnectError"):
            await provider.complete(call)
    finally:
        await provider.aclose()
