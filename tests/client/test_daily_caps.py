"""Daily caps (``rpd_limit``, ``tpd_limit``) end to end, on virtual time."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from maxllm_gate import KeyConfig, RequestTimeoutError, SimulatedProvider, maxllm_gate
from maxllm_gate.limits import DAY
from tests.support import MODEL, expose, make_key

pytestmark = pytest.mark.anyio


# One key of each provider shape (providers/shapes.py), with a daily cap of 5
# requests. Where a finished call can give tokens back (usage accounting,
# Anthropic's unused output), the wait for a token bucket is not known in
# advance; the wait for a request count is.
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "openai": ("openai", {"rpm_limit": 600, "tpm_limit": 100_000}),
    "openai-usage": (
        "openai",
        {"rpm_limit": 600, "tpm_limit": 100_000, "token_accounting": "usage"},
    ),
    "azure": ("azure", {"rpm_limit": 600, "tpm_limit": 100_000}),
    "groq": ("groq", {"rpm_limit": 30, "tpm_limit": 6_000}),
    "gemini": ("gemini", {"rpm_limit": 15, "tpm_limit": 250_000}),
    "anthropic": ("anthropic", {"rpm_limit": 50, "itpm_limit": 40_000, "otpm_limit": 8_000}),
}


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_every_provider_shape_fails_a_request_beyond_its_daily_cap_at_once(
    shape: str,
) -> None:
    provider_name, limits = SHAPES[shape]
    key = KeyConfig(
        api_key="sk-secret-daily-0123456789",
        provider=provider_name,
        key_id="k1",
        models={MODEL: {**limits, "rpd_limit": 5}},
    )
    provider = SimulatedProvider(latency=0.0, completion_tokens=4)
    async with maxllm_gate(keys=[key], provider=provider) as client:
        for _ in range(5):
            await client.chat(MODEL, "hi", max_tokens=64)
        start = anyio.current_time()
        with pytest.raises(RequestTimeoutError) as caught:
            await client.chat(MODEL, "hi", max_tokens=64, timeout=5)
        elapsed = anyio.current_time() - start
    expose(caught.value)
    assert elapsed < 0.01
    message = str(caught.value)
    assert "daily request cap (rpd_limit=5" in message and "k1" in message
    assert provider.accepted == 5 and provider.rate_limited == 0


async def test_a_wait_for_output_tokens_a_call_may_give_back_is_waited_out() -> None:
    # 60 OTPM, a minute of burst: the first call reserves all of it; the second
    # would wait a minute, unless the first gives back what it did not use.
    limits = {"rpm_limit": 50, "itpm_limit": 40_000, "otpm_limit": 60, "rpd_limit": 5}
    key = KeyConfig(
        api_key="sk-secret-otpm-0123456789",
        provider="anthropic",
        key_id="k1",
        models={MODEL: {**limits, "burst_seconds": 60}},
    )
    provider = SimulatedProvider(latency=1.0, completion_tokens=4)
    client = maxllm_gate(keys=[key], provider=provider)
    async with client, anyio.create_task_group() as tg:
        tg.start_soon(lambda: client.chat(MODEL, "hi", max_tokens=60))
        await anyio.sleep(0.1)
        start = anyio.current_time()
        await client.chat(MODEL, "hi", max_tokens=60, timeout=10)
        waited = anyio.current_time() - start
    # Admitted once the first call's 56 unused tokens came back and 4 s refilled.
    assert 4.0 < waited < 6.5
    assert provider.accepted == 2


async def test_a_wait_for_output_tokens_with_no_call_to_give_any_back_is_known() -> None:
    # The first call uses all 60 of its max_tokens: nothing comes back, and with
    # no other call in flight the second's wait is a minute's refill, known now.
    limits = {"rpm_limit": 50, "itpm_limit": 40_000, "otpm_limit": 60, "burst_seconds": 60}
    key = KeyConfig(
        api_key="sk-secret-otpm-0123456789",
        provider="anthropic",
        key_id="k1",
        models={MODEL: limits},
    )
    provider = SimulatedProvider(latency=1.0, completion_tokens=60)
    async with maxllm_gate(keys=[key], provider=provider) as client:
        await client.chat(MODEL, "hi", max_tokens=60)
        start = anyio.current_time()
        with pytest.raises(RequestTimeoutError) as caught:
            await client.chat(MODEL, "hi", max_tokens=60, timeout=10)
        elapsed = anyio.current_time() - start
    assert elapsed < 0.01
    assert "output tokens per minute (otpm_limit=60" in str(caught.value)


async def test_without_a_timeout_it_waits_for_the_refill_and_says_why() -> None:
    provider = SimulatedProvider(latency=0.0)
    key = make_key("k1", 600, 100_000, rpd_limit=5)
    async with maxllm_gate(keys=[key], provider=provider) as client:
        for _ in range(5):
            await client.chat(MODEL, "hi", max_tokens=8)
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.chat, MODEL, "hi")
            await anyio.sleep(60)
            status, capacity = client.status(), client.capacity()
        waited = anyio.current_time() - start
    assert status["queued"] == 1
    assert "daily request cap (rpd_limit=5" in status["keys"]["k1"]["spent"][MODEL][0]
    cap = capacity["keys"]["k1"]["models"][MODEL]["rpd_limit"]
    assert cap["limit"] == 5 and cap["window_seconds"] == DAY
    assert cap["remaining"] < 1 and cap["full_in"] == pytest.approx(DAY - 60, abs=1)
    # One request's share of the day refills first (plus the admission margin).
    assert waited == pytest.approx(DAY / 5, abs=1)
    assert provider.accepted == 6


async def test_a_daily_token_cap_counts_each_requests_charge() -> None:
    provider = SimulatedProvider(latency=0.0)
    key = make_key("k1", 600, 100_000, tpd_limit=1_000)
    async with maxllm_gate(keys=[key], provider=provider) as client:
        await client.chat(MODEL, "hi", max_tokens=900)
        with pytest.raises(RequestTimeoutError, match=r"daily token cap \(tpd_limit=1000"):
            await client.chat(MODEL, "hi", max_tokens=200, timeout=5)
