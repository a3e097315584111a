"""Daily caps (``rpd_limit``, ``tpd_limit``) end to end, on virtual time."""

from __future__ import annotations

import anyio
import pytest

from maxllm_gate import RequestTimeoutError, SimulatedProvider, maxllm_gate
from maxllm_gate.limits import DAY
from tests.support import MODEL, expose, make_key

pytestmark = pytest.mark.anyio


async def test_a_spent_daily_request_cap_fails_a_timed_request_at_once() -> None:
    provider = SimulatedProvider(latency=0.0)
    key = make_key("k1", 600, 100_000, rpd_limit=5)
    async with maxllm_gate(keys=[key], provider=provider) as client:
        for _ in range(5):
            await client.chat(MODEL, "hi", max_tokens=8)
        start = anyio.current_time()
        with pytest.raises(RequestTimeoutError) as caught:
            await client.chat(MODEL, "hi", max_tokens=8, timeout=5)
        elapsed = anyio.current_time() - start
    expose(caught.value)
    assert elapsed < 0.01
    message = str(caught.value)
    assert "daily request cap (rpd_limit=5" in message and "k1" in message
    assert provider.accepted == 5 and provider.rate_limited == 0


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
