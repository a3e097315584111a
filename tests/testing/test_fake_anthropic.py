"""The Anthropic-profile fake over real HTTP, and the client against it through
LiteLLM's Anthropic path (the real clock: real sockets)."""

from __future__ import annotations

import functools
from typing import Any

import anyio
import attrs
import httpx
import pytest

from maxllm_gate import KeyConfig, maxllm_gate
from maxllm_gate.providers import litellm_provider
from maxllm_gate.testing.fake_anthropic import AnthropicLimits, FakeAnthropic

KEY = "sk-ant-test-0123456789"
MODEL = "claude-sonnet-4-5"
LONG = "word " * 300  # 300 tokens by the fake's count, plus 3 for its message

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:Accessing the 'model_:DeprecationWarning"),
]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def post(fake: FakeAnthropic, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=fake.url) as http:
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        return await http.post("/v1/messages", json=body, headers=headers)


async def test_input_and_output_are_separate_buckets() -> None:
    # 60 s of burst: ITPM holds 600 tokens, OTPM 100.
    fake = FakeAnthropic(limits={KEY: AnthropicLimits(50, 600, 100)}, burst_window=60)
    async with fake.running():
        first = await post(
            fake,
            {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": LONG}]},
        )
        assert first.status_code == 200
        answer = first.json()
        assert answer["type"] == "message" and answer["usage"]["input_tokens"] == 303
        assert answer["usage"]["output_tokens"] == 16
        assert first.headers["anthropic-ratelimit-input-tokens-remaining"] == "297"
        assert first.headers["anthropic-ratelimit-output-tokens-remaining"] == "80"
        assert first.headers["anthropic-ratelimit-requests-limit"] == "50"
        # The input does not fit again; the output would.
        refused = await post(
            fake,
            {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": LONG}]},
        )
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert int(refused.headers["retry-after"]) >= 1
        # Short input, but more output than is left: refused on OTPM.
        short = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        assert (await post(fake, {**short, "max_tokens": 90})).status_code == 429
        assert (await post(fake, {**short, "max_tokens": 50})).status_code == 200
    assert fake.rate_limited == 2 and fake.accepted == 2


async def test_cache_reads_do_not_count_toward_itpm_but_do_on_the_marked_models() -> None:
    fake = FakeAnthropic(limits={KEY: AnthropicLimits(50, 6000, 6000)}, burst_window=60)
    cached = [{"type": "text", "text": LONG, "cache_control": {"type": "ephemeral"}}]
    models = (
        (MODEL, 5),
        ("claude-3-7-sonnet-20250219", 5),
        ("claude-3-5-haiku-latest", 305),
        ("claude-3-5-sonnet-20241022", 305),
    )
    async with fake.running():
        for model, counted in models:
            body = {
                "model": model,
                "max_tokens": 8,
                "system": cached,
                "messages": [{"role": "user", "content": "hi there"}],
            }
            written = (await post(fake, body)).json()["usage"]
            assert written["cache_creation_input_tokens"] == 300
            before = fake.stats_for(KEY).input_charged
            read = (await post(fake, body)).json()["usage"]
            assert read["cache_read_input_tokens"] == 300 and read["input_tokens"] == 5
            assert fake.stats_for(KEY).input_charged - before == counted


def anthropic_key(api_base: str, **limits: Any) -> KeyConfig:
    return KeyConfig(
        api_key=KEY,
        provider="anthropic",
        key_id="ant-1",
        api_base=api_base,
        transport="litellm",
        models={MODEL: {"rpm_limit": 50, "itpm_limit": 6000, "otpm_limit": 6000, **limits}},
    )


async def warm_up_litellms_anthropic_path() -> None:
    """LiteLLM's first Anthropic call spends ~0.5 s inside LiteLLM before it sends:
    after our admission, so the fake's charge for it starts that much later than
    ours, and the next admission can come early. One call first, on another key."""
    warm = FakeAnthropic(limits={"sk-ant-warm-up": AnthropicLimits(50, 6000, 6000)})
    async with warm.running():
        key = attrs.evolve(anthropic_key(warm.url), api_key="sk-ant-warm-up", key_id="warm")
        async with maxllm_gate(keys=[key]) as client:
            await client.chat(MODEL, "hi", max_tokens=1)


async def test_the_client_through_litellm_keeps_within_itpm_and_otpm() -> None:
    litellm_provider._import_litellm()
    await warm_up_litellms_anthropic_path()
    # 6000 ITPM: 100 tokens a second; each call's input is 303: one every ~3 s.
    fake = FakeAnthropic(limits={KEY: AnthropicLimits(50, 6000, 6000)}, completion_tokens=16)
    async with fake.running():
        key = anthropic_key(fake.url)
        async with maxllm_gate(keys=[key]) as client:
            start = anyio.current_time()
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(functools.partial(client.chat, MODEL, LONG, max_tokens=64))
            elapsed = anyio.current_time() - start
            model = client.capacity()["keys"]["ant-1"]["models"][MODEL]
    assert fake.rate_limited == 0 and fake.accepted == 3
    assert elapsed > 3.0  # the first fits the 1 s burst, the next two wait for ITPM
    assert model["tpm_limit"] == 6000 and model["otpm_limit"]["limit"] == 6000
    # The output bucket was given back all but what the answers used.
    assert model["otpm_limit"]["remaining"] > 100 - 3 * 16 - 1
