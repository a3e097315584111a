"""The Anthropic-profile fake over real HTTP, and the client against it through
LiteLLM's Anthropic path (the real clock: real sockets)."""

from __future__ import annotations

import functools
import json
from typing import Any

import anyio
import attrs
import httpx
import pytest

from maxllm_gate import KeyConfig, maxllm_gate
from maxllm_gate.providers import litellm_provider
from maxllm_gate.testing._http import Request
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


async def test_a_stream_sends_anthropics_events_and_keeps_only_the_output_sent() -> None:
    fake = FakeAnthropic(limits={KEY: AnthropicLimits(50, 600, 100)}, burst_window=60)
    body = {
        "model": MODEL,
        "max_tokens": 40,
        "stream": True,
        "messages": [{"role": "user", "content": LONG}],
    }
    async with fake.running(), httpx.AsyncClient(base_url=fake.url) as http:
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        async with http.stream("POST", "/v1/messages", json=body, headers=headers) as response:
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["anthropic-ratelimit-output-tokens-remaining"] == "60"
            assert response.headers["anthropic-ratelimit-input-tokens-remaining"] == "297"
            lines = [line async for line in response.aiter_lines() if line]
        short = [{"role": "user", "content": "hi"}]
        after = await post(fake, {"model": MODEL, "max_tokens": 1, "messages": short})
        assert after.status_code == 200
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    events = [json.loads(line.removeprefix("data: ")) for line in lines[1::2]]
    assert names == [e["type"] for e in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,  # 16 tokens, 4 a delta
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0]["message"]
    assert start["content"] == [] and start["usage"]["input_tokens"] == 303
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "lorem " * 16
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert events[-2]["usage"] == {"output_tokens": 16}
    # OTPM kept the 16 generated of the 40 reserved: 100 - 16, less this call's 1
    # (plus what refilled meanwhile, 100 a minute).
    assert 83 <= int(after.headers["anthropic-ratelimit-output-tokens-remaining"]) <= 85
    assert fake.stats_for(KEY).output_charged == 16 + 1


class HangsUpAfter:
    """The server side of a connection whose client goes away after ``events`` events."""

    def __init__(self, events: int) -> None:
        self.events = events
        self.sent: list[bytes] = []

    async def start_response(self, status: int, headers: Any) -> None:
        assert status == 200

    async def send_data(self, data: bytes) -> None:
        if len(self.sent) == self.events:
            raise anyio.BrokenResourceError
        self.sent.append(data)


async def test_a_stream_cut_short_keeps_on_otpm_only_what_was_sent() -> None:
    fake = FakeAnthropic(limits={KEY: AnthropicLimits(50, 600, 100)}, burst_window=60)
    body = {"model": MODEL, "max_tokens": 40, "stream": True, "messages": [{"role": "user"}]}
    request = Request("POST", "/v1/messages", {"x-api-key": KEY}, json.dumps(body).encode())
    # message_start, content_block_start, ping and one delta of 4 tokens; then gone.
    client = HangsUpAfter(events=4)
    with pytest.raises(anyio.BrokenResourceError):
        await fake._handle(request, client)  # type: ignore[arg-type]
    assert b"content_block_delta" in client.sent[-1]
    stats = fake.stats_for(KEY)
    assert stats.output_charged == 4 and stats.output_tokens == 4
    # The bucket gave back the 36 reserved and not generated.
    (buckets,) = fake._buckets.values()
    assert buckets.output.available(anyio.current_time()) == pytest.approx(96, abs=0.5)


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


async def test_the_client_streams_through_litellm_and_gives_back_the_unused_output() -> None:
    litellm_provider._import_litellm()
    await warm_up_litellms_anthropic_path()
    # A minute of burst on both sides: OTPM holds 120 tokens, refilling 2 a second.
    # Each stream reserves max_tokens=100 and uses 16: the next fits at once only if
    # the unused 84 came back when the last one's usage arrived (else it waits 40 s).
    fake = FakeAnthropic(
        limits={KEY: AnthropicLimits(50, 6000, 120)},
        burst_window=60,
        seconds_per_token=0.005,
    )
    async with fake.running():
        key = anthropic_key(fake.url, otpm_limit=120, burst_seconds=60)
        async with maxllm_gate(keys=[key]) as client:
            start = anyio.current_time()
            texts, usages = [], []
            for _ in range(3):
                async with await client.stream_chunks(MODEL, "hi", max_tokens=100) as stream:
                    texts.append("".join([chunk.text async for chunk in stream]))
                assert stream.response is not None and stream.response.usage is not None
                usages.append(stream.response.usage)
            elapsed = anyio.current_time() - start
            otpm = client.capacity()["keys"]["ant-1"]["models"][MODEL]["otpm_limit"]
        stats = fake.stats_for(KEY)
    assert fake.rate_limited == 0 and fake.accepted == 3
    assert texts == ["lorem " * 16] * 3
    assert [(u.prompt_tokens, u.completion_tokens) for u in usages] == [(4, 16)] * 3
    assert elapsed < 10.0
    assert stats.output_charged == 3 * 16
    # Our bucket agrees with the fake's: 120 less the 48 generated, plus the refill.
    assert 120 - 48 - 1 <= otpm["remaining"] <= 120


async def test_a_529_overloaded_error_through_litellm_is_retried() -> None:
    litellm_provider._import_litellm()
    fake = FakeAnthropic(limits={KEY: AnthropicLimits(50, 6000, 6000)})
    async with fake.running():
        fake.overload(times=2)
        client = maxllm_gate(keys=[anthropic_key(fake.url)], retry_base_delay=0.01)
        async with client:
            response = await client.chat(MODEL, "hi", max_tokens=8)
    assert response.attempts == 3 and response.content == "lorem " * 8
    stats = fake.stats_for(KEY)
    assert stats.overloaded == 2 and stats.accepted == 1 and fake.rate_limited == 0
