"""The client end to end through each built-in transport, over HTTP, against the fake provider.

client -> LiteLLM or the native transport -> HTTP -> FakeProvider, under asyncio and
trio, on the real clock (real sockets). No ``provider=`` is passed: each key's
``transport`` picks the built-in provider, as it does for users.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from maxllm_gate import (
    BadRequestError,
    KeyConfig,
    NoKeyAvailableError,
    maxllm_gate,
)
from maxllm_gate.testing import FakeProvider

MODEL = "gpt-4o-mini"
KEYS = {"k1": "sk-e2e-one-0123456789", "k2": "sk-e2e-two-0123456789"}

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # LiteLLM's pydantic use
]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["openai_compat", "litellm"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    limits = {api_key: {MODEL: (600.0, 200_000.0)} for api_key in KEYS.values()}
    async with FakeProvider(limits=limits, completion_tokens=12).running() as fake:
        yield fake


def make_client(
    fake: FakeProvider, transport: str, key_ids: tuple[str, ...] = ("k1",), **settings: Any
) -> maxllm_gate:
    keys = [
        KeyConfig(
            api_key=KEYS[key_id],
            provider="openai",
            key_id=key_id,
            api_base=fake.url,
            transport=transport,
            models={MODEL: {"rpm_limit": 600, "tpm_limit": 200_000}},
        )
        for key_id in key_ids
    ]
    return maxllm_gate(keys=keys, retry_base_delay=0.05, **settings)


async def until_idle(fake: FakeProvider) -> None:
    with anyio.fail_after(5):
        while any(fake.stats_for(k)["in_flight"] for k in KEYS.values()):  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_chat(fake: FakeProvider, transport: str) -> None:
    async with make_client(fake, transport) as client:
        response = await client.chat(MODEL, "Hello over HTTP", max_tokens=50, temperature=0.0)
    assert response.content == "lorem " * 12
    assert response.usage is not None and response.usage.completion_tokens == 12
    assert response.finish_reason == "stop"
    assert response.key_used == "k1"
    assert response.attempts == 1


async def test_chat_stream(fake: FakeProvider, transport: str) -> None:
    async with make_client(fake, transport) as client:
        text = "".join([d async for d in client.chat_stream(MODEL, "Stream, please")])
    assert text == "lorem " * 12
    assert fake.stats_for(KEYS["k1"])["completion_tokens"] == 12


async def test_cancelling_mid_stream_closes_the_upstream_call(
    fake: FakeProvider, transport: str
) -> None:
    slow = FakeProvider(
        limits={KEYS["k1"]: {MODEL: (600.0, 200_000.0)}},
        completion_tokens=400,
        seconds_per_token=0.01,
    )
    async with slow.running(), make_client(slow, transport) as client:
        stream = client.chat_stream(MODEL, "A long story", max_tokens=1000)
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        await until_idle(slow)
        assert client.status()["outstanding"] == 0
    assert slow.stats_for(KEYS["k1"])["completion_tokens"] < 400


async def test_a_429_with_retry_after_is_absorbed(fake: FakeProvider, transport: str) -> None:
    fake.inject(429, headers={"retry-after-ms": "300", "retry-after": "1"})
    async with make_client(fake, transport) as client:
        start = anyio.current_time()
        response = await client.chat(MODEL, "hi")
        waited = anyio.current_time() - start
    assert response.attempts == 2
    assert waited >= 0.3
    assert fake.stats_for(KEYS["k1"])["calls"] == 2  # no retry inside the transport


async def test_a_5xx_is_retried(fake: FakeProvider, transport: str) -> None:
    fake.inject(503, times=2)
    async with make_client(fake, transport) as client:
        response = await client.chat(MODEL, "hi")
    assert response.attempts == 3


async def test_a_400_is_raised_without_retrying(fake: FakeProvider, transport: str) -> None:
    fake.inject(400, body={"error": {"message": "bad request", "code": "invalid"}})
    async with make_client(fake, transport) as client:
        with pytest.raises(BadRequestError):
            await client.chat(MODEL, "hi")
    assert fake.stats_for(KEYS["k1"])["calls"] == 1


async def test_a_revoked_key_is_disabled_and_its_traffic_rerouted(
    fake: FakeProvider, transport: str
) -> None:
    fake.revoke(KEYS["k1"])
    async with make_client(fake, transport, ("k1", "k2"), strategy="round_robin") as client:
        used = [(await client.chat(MODEL, f"hi {i}")).key_used for i in range(4)]
        assert client.status()["keys"]["k1"]["enabled"] is False
    assert used == ["k2"] * 4


async def test_when_every_key_is_revoked_the_caller_gets_a_clear_error(
    fake: FakeProvider, transport: str
) -> None:
    for api_key in KEYS.values():
        fake.revoke(api_key)
    async with make_client(fake, transport, ("k1", "k2")) as client:
        with anyio.fail_after(10), pytest.raises(NoKeyAvailableError, match="disabled"):
            await client.chat(MODEL, "hi")


async def test_the_headers_sync_the_buckets(fake: FakeProvider, transport: str) -> None:
    """The provider's real limit (60 RPM) is lower than configured (600): the first
    answer's headers teach the gate, and the gate converges to no 429s."""
    strict = FakeProvider(limits={KEYS["k1"]: {MODEL: (60.0, 200_000.0)}}, completion_tokens=4)
    async with strict.running(), make_client(strict, transport) as client:
        await client.chat(MODEL, "first")
        responses = []
        for i in range(4):
            responses.append(await client.chat(MODEL, f"hi {i}"))
        capacity = client.capacity()["keys"]["k1"]["models"][MODEL]
    assert capacity["requests_capacity"] == 1.0  # one second of the real 60 RPM
    # A new connection's setup can delay the first call past the admission margin, so
    # the next may still draw one 429 (absorbed); after that, none.
    assert strict.rate_limited <= 1
    assert all(r.attempts == 1 for r in responses[1:])


async def test_a_burst_at_start_up_draws_no_429_storm(fake: FakeProvider, transport: str) -> None:
    """LiteLLM loads before the first admission, so a start-up burst is paced, not
    held back by the import and then sent together."""
    strict = FakeProvider(limits={KEYS["k1"]: {MODEL: (600.0, 200_000.0)}}, completion_tokens=4)
    async with strict.running():
        client = make_client(strict, transport)
        async with client, anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(client.chat, MODEL, f"burst {i}")
    assert strict.accepted == 20
    assert strict.rate_limited <= 1  # at most the new-connection case (see concepts.md)
