"""Socket-level faults over real HTTP, on the real clock, under both backends: hung
connections, resets before an answer and in the middle of a stream, 5xx bursts and
429 storms, with the limits in process memory or in a real Redis.

The fake provider counts the calls of each ``x-client-request-id`` (the same on
every attempt of one request), which tells how often a request arrived twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from maxllm_gate import KeyConfig, TransientError, maxllm_gate
from maxllm_gate.state import MemoryState, StateBackend
from maxllm_gate.state.hybrid import HybridRateLimiter
from maxllm_gate.testing import FakeProvider
from tests.faults.outcomes import assert_settled, send_all
from tests.support import assert_no_secret_in_redis, expose

pytestmark = pytest.mark.anyio

MODEL = "fake-model"
LIMITS = {"sk-http-fault-a-0000": (600, 60_000), "sk-http-fault-b-0000": (600, 60_000)}
# The provider's own 429s we tolerate on this shared machine: a call that must open a
# new connection (after a reset or a hang) can reach the provider later than the
# admission margin allows, so the next one may find its bucket not yet refilled (see
# "Known limitations" in docs/concepts.md). No caller ever sees one.
JITTER_429S = 5


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)  # real sockets want the real clock


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[StateBackend]:
    if request.param == "memory":
        yield MemoryState()
        return
    url = request.getfixturevalue("redis_url")
    async with HybridRateLimiter(url, fallback_to_memory=False, prefix=prefix) as limiter:
        assert limiter.is_distributed
        yield limiter
    assert_no_secret_in_redis(url, LIMITS)


def _keys(url: str) -> list[KeyConfig]:
    return [
        KeyConfig(
            api_key=api_key,
            provider="openai",
            key_id=f"key-{i}",
            api_base=url,
            transport="openai_compat",
            models={MODEL: {"rpm_limit": rpm, "tpm_limit": tpm}},
        )
        for i, (api_key, (rpm, tpm)) in enumerate(LIMITS.items())
    ]


def _fake(**kwargs: Any) -> FakeProvider:
    limits = {key: {MODEL: rates} for key, rates in LIMITS.items()}
    return FakeProvider(limits=limits, latency=0.05, **kwargs)


async def test_hung_connections_are_cut_by_call_timeout_and_sent_again(
    state: StateBackend,
) -> None:
    async with _fake().running() as fake:
        fake.inject_hang(times=3)
        async with maxllm_gate(keys=_keys(fake.url), state=state, call_timeout=1.0) as client:
            outcomes = await send_all(client, 20, within=30, model=MODEL, max_tokens=20)
            await assert_settled(client)
    outcomes.assert_each_ended_once()
    assert len(outcomes.results) == 20
    # Never answered, so sent again: the provider ran those 3 twice. (A request
    # refused with a jitter 429 is sent again too, but was never run twice.)
    assert 3 <= fake.duplicates <= 3 + fake.rate_limited
    assert fake.rate_limited <= JITTER_429S


async def test_a_reset_before_the_answer_is_retried(state: StateBackend) -> None:
    async with _fake().running() as fake:
        fake.inject_reset(times=4)
        async with maxllm_gate(keys=_keys(fake.url), state=state, retry_base_delay=0.05) as client:
            outcomes = await send_all(client, 20, within=30, model=MODEL, max_tokens=20)
            await assert_settled(client)
    outcomes.assert_each_ended_once()
    assert len(outcomes.results) == 20
    assert 4 <= fake.duplicates <= 4 + fake.rate_limited
    assert fake.rate_limited <= JITTER_429S


async def test_a_reset_in_the_middle_of_a_stream_ends_it_with_a_clear_error() -> None:
    async with _fake(seconds_per_token=0.01).running() as fake:
        fake.inject_reset(after_chunks=2)
        async with maxllm_gate(keys=_keys(fake.url)[:1]) as client:
            text: list[str] = []
            with pytest.raises(TransientError) as info:
                async for delta in client.chat_stream(MODEL, "a story", max_tokens=40):
                    text.append(delta)
            # What reached the caller is never repeated; the next stream is whole.
            assert "".join(text) == "lorem " * 8
            whole = [d async for d in client.chat_stream(MODEL, "a story", max_tokens=40)]
            await assert_settled(client)
    expose(info.value)
    assert "".join(whole) == "lorem " * 16
    assert fake.duplicates == 0


async def test_a_stream_reset_before_its_first_text_is_retried() -> None:
    async with _fake().running() as fake:
        fake.inject_reset(times=2)
        async with maxllm_gate(keys=_keys(fake.url), retry_base_delay=0.05) as client:
            text = [d async for d in client.chat_stream(MODEL, "a story", max_tokens=40)]
            await assert_settled(client)
    assert "".join(text) == "lorem " * 16
    assert fake.duplicates == 1
    assert next(iter(fake.request_sends.values())) == 3


async def test_a_5xx_burst_is_retried_until_every_request_succeeds(state: StateBackend) -> None:
    async with _fake().running() as fake:
        fake.inject(500, times=8)
        fake.inject(503, times=8)
        async with maxllm_gate(
            keys=_keys(fake.url), state=state, max_retries=8, retry_base_delay=0.05
        ) as client:
            outcomes = await send_all(client, 30, within=30, model=MODEL, max_tokens=20)
            await assert_settled(client)
    outcomes.assert_each_ended_once()
    assert len(outcomes.results) == 30
    # One resend per 5xx answered (and per jitter 429, handled like any 429).
    assert sum(fake.request_sends.values()) == 30 + 16 + fake.rate_limited
    assert fake.rate_limited <= JITTER_429S


async def test_a_429_storm_with_retry_after_never_reaches_a_caller(state: StateBackend) -> None:
    async with _fake().running() as fake:
        key_a = next(iter(LIMITS))
        fake.inject(429, times=6, api_key=key_a, headers={"retry-after": "1"})
        async with maxllm_gate(keys=_keys(fake.url), state=state, max_retries=0) as client:
            start = anyio.current_time()
            outcomes = await send_all(client, 30, within=30, model=MODEL, max_tokens=20)
            status = client.status()
            await assert_settled(client)
    outcomes.assert_each_ended_once()
    assert len(outcomes.results) == 30  # with no retries at all: a 429 is not a failure
    assert status["keys"]["key-0"]["rate_limited"] >= 1
    assert fake.rate_limited <= JITTER_429S  # the storm was the injected one
    assert anyio.current_time() - start < 20


async def test_lower_real_limits_are_learned_from_the_headers_and_the_429s_stop() -> None:
    # Configured 3,000 RPM (a burst of 50); the provider allows 600 (a burst of 10).
    limits = {key: {MODEL: (600.0, 600_000.0)} for key in LIMITS}
    async with FakeProvider(limits=limits, latency=0.2).running() as fake:
        keys = [
            KeyConfig(
                api_key=k.api_key,
                provider="openai",
                key_id=k.key_id,
                api_base=fake.url,
                transport="openai_compat",
                models={MODEL: {"rpm_limit": 3000, "tpm_limit": 3_000_000}},
            )
            for k in _keys(fake.url)
        ]
        async with maxllm_gate(keys=keys) as client:
            first = await send_all(client, 30, within=30, model=MODEL, max_tokens=20)
            early = fake.rate_limited
            second = await send_all(client, 60, within=30, model=MODEL, max_tokens=20)
            await assert_settled(client)
    first.assert_each_ended_once()
    second.assert_each_ended_once()
    assert len(first.results) + len(second.results) == 90
    assert early > 0  # the first burst, sized by the configured limits
    assert fake.rate_limited == early  # after the first answers, none
