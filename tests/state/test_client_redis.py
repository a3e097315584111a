"""REDIS_URL shares the limits between clients (as between processes)."""

from __future__ import annotations

import anyio
import pytest

from maxllm_gate import KeyConfig, RequestTimeoutError, SimulatedProvider, maxllm_gate
from maxllm_gate.state.hybrid import HybridRateLimiter

MODEL = "sim-model"


def _key() -> KeyConfig:
    return KeyConfig(
        api_key="sk-shared-by-two-clients-0000",
        provider="openai",
        key_id="shared",
        models={MODEL: {"rpm_limit": 600, "tpm_limit": 1_000_000}},
    )


@pytest.mark.anyio
async def test_two_clients_with_redis_url_share_one_key_without_429(redis_url: str) -> None:
    # One provider sees both clients' calls, as the real one would; 600 RPM with a
    # 1 s burst is 10 at once, then one every 0.1 s between them.
    provider = SimulatedProvider()
    prefix = f"test-{anyio.current_time()}"
    first = maxllm_gate(keys=[_key()], provider=provider, redis_url=f"{redis_url}")
    second = maxllm_gate(keys=[_key()], provider=provider, redis_url=f"{redis_url}")
    assert isinstance(first._state, HybridRateLimiter)
    for client in (first, second):
        client._state.redis.prefix = prefix  # type: ignore[attr-defined]
    async with first, second, anyio.create_task_group() as tg:
        assert first._state.is_distributed and second._state.is_distributed
        for i in range(15):
            tg.start_soon(first.chat, MODEL, f"first {i}")
            tg.start_soon(second.chat, MODEL, f"second {i}")
    assert provider.accepted == 30
    assert provider.rate_limited == 0


@pytest.mark.anyio
async def test_without_redis_each_client_alone_overruns_the_shared_key() -> None:
    """The control: the same traffic with per-process limits draws 429s."""
    provider = SimulatedProvider()
    first = maxllm_gate(keys=[_key()], provider=provider)
    second = maxllm_gate(keys=[_key()], provider=provider)
    async with first, second, anyio.create_task_group() as tg:
        for i in range(15):
            tg.start_soon(first.chat, MODEL, f"first {i}")
            tg.start_soon(second.chat, MODEL, f"second {i}")
    assert provider.rate_limited > 0


_PER_MINUTE = {
    "openai": {"rpm_limit": 600, "tpm_limit": 1_000_000},
    # Unused output comes back (OTPM): the daily cap's wait is known all the same.
    "anthropic": {"rpm_limit": 600, "itpm_limit": 1_000_000, "otpm_limit": 100_000},
}


@pytest.mark.anyio
@pytest.mark.parametrize("provider_name", list(_PER_MINUTE))
async def test_a_daily_cap_shared_through_redis_fails_a_timed_request_at_once(
    redis_url: str, provider_name: str
) -> None:
    key = KeyConfig(
        api_key="sk-daily-cap-0000",
        provider=provider_name,
        key_id="daily",
        models={MODEL: {**_PER_MINUTE[provider_name], "rpd_limit": 5}},
    )
    provider = SimulatedProvider()
    first = maxllm_gate(keys=[key], provider=provider, redis_url=redis_url)
    second = maxllm_gate(keys=[key], provider=provider, redis_url=redis_url)
    prefix = f"test-daily-{provider_name}-{anyio.current_time()}"
    for client in (first, second):
        client._state.redis.prefix = prefix  # type: ignore[attr-defined]
    async with first, second:
        for client in (first, second, first, second, first):  # 5 between two processes
            await client.chat(MODEL, "hi", max_tokens=8)
        start = anyio.current_time()
        with pytest.raises(RequestTimeoutError, match=r"daily request cap \(rpd_limit=5"):
            await second.chat(MODEL, "hi", max_tokens=8, timeout=5)
        elapsed = anyio.current_time() - start
    assert elapsed < 0.01
    assert provider.accepted == 5 and provider.rate_limited == 0
