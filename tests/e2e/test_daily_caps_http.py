"""Groq's per-day request headers feed the client's daily cap, over HTTP.

client -> native transport -> HTTP -> FakeProvider with Groq's headers and its own
daily cap, under asyncio and trio, on the real clock (real sockets).
"""

from __future__ import annotations

import time

import pytest

from maxllm_gate import KeyConfig, RequestTimeoutError, maxllm_gate
from maxllm_gate.testing import FakeProvider

MODEL = "llama-3.1-8b-instant"
KEY = "gsk-e2e-daily-0123456789"

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_groqs_request_headers_teach_a_daily_cap_set_too_high() -> None:
    # The provider allows 5 requests a day; the configuration says 100. Groq's
    # x-ratelimit-*-requests count per day: they correct the daily cell, so the
    # 6th request fails at once instead of drawing the provider's 429.
    fake = FakeProvider(
        default_limits=(600, 60_000), requests_per_day=5, requests_per_day_headers=True
    )
    async with fake.running():
        key = KeyConfig(
            api_key=KEY,
            provider="groq",
            key_id="groq-1",
            api_base=fake.url,
            transport="openai_compat",
            models={MODEL: {"rpm_limit": 600, "tpm_limit": 60_000, "rpd_limit": 100}},
        )
        async with maxllm_gate(keys=[key]) as client:
            for _ in range(5):
                await client.chat(MODEL, "hi", max_tokens=8)
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError, match=r"daily request cap \(rpd_limit=100"):
                await client.chat(MODEL, "hi", max_tokens=8, timeout=5)
            elapsed = time.monotonic() - started
            cap = client.capacity()["keys"]["groq-1"]["models"][MODEL]["rpd_limit"]
    assert elapsed < 0.01
    assert fake.rate_limited == 0 and fake.stats_for(KEY)["accepted"] == 5
    assert cap["remaining"] < 1
