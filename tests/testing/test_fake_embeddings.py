"""Embeddings on the testing kit: the fake HTTP provider and the simulated one, each
with its own accounting (maxllm_gate.testing.provider_limits), and the transports
and the client against the fake over real HTTP."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import httpx
import pytest

from maxllm_gate import KeyConfig, maxllm_gate
from maxllm_gate.providers import litellm_provider
from maxllm_gate.providers.base import ProviderCall
from maxllm_gate.providers.litellm_provider import LiteLLMProvider
from maxllm_gate.testing import provider_limits
from maxllm_gate.testing.fake_provider import FakeProvider

pytestmark = pytest.mark.anyio

KEY = "sk-test-embed-key-a"
MODEL = "text-embedding-3-small"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)  # real sockets: the real clock


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def embed(http: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await http.post("/embeddings", json={"model": MODEL, **body}, headers=auth())


async def test_vectors_are_deterministic_unit_vectors_of_the_asked_dimensions() -> None:
    async with (
        FakeProvider(limits={KEY: {MODEL: (600, 100_000)}}).running() as fake,
        httpx.AsyncClient(base_url=fake.url) as http,
    ):
        plain = await embed(http, input=["hello world", "bye"])
        short = await embed(http, input="hello world", dimensions=64)
        tokens = await embed(http, input=[[1, 2, 3]])
    assert plain.status_code == 200, plain.text
    answer = plain.json()
    assert answer["object"] == "list" and answer["model"] == MODEL
    assert [d["index"] for d in answer["data"]] == [0, 1]
    first = answer["data"][0]["embedding"]
    assert len(first) == 1536 and math.isclose(sum(v * v for v in first), 1.0, rel_tol=1e-9)
    assert first == provider_limits.fake_vector("hello world", 1536)
    assert short.json()["data"][0]["embedding"] == provider_limits.fake_vector("hello world", 64)
    assert tokens.json()["data"][0]["embedding"] == provider_limits.fake_vector([1, 2, 3], 1536)
    # usage: the fake's own tokenizer (words and marks); a token array counts its length
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert tokens.json()["usage"]["prompt_tokens"] == 3
    assert "x-ratelimit-remaining-tokens" in plain.headers


async def test_base64_is_little_endian_float32_as_openai_sends_it() -> None:
    async with (
        FakeProvider(default_limits=(600, 100_000)).running() as fake,
        httpx.AsyncClient(base_url=fake.url) as http,
    ):
        response = await embed(http, input="abc", dimensions=16, encoding_format="base64")
    encoded = response.json()["data"][0]["embedding"]
    decoded = struct.unpack("<16f", base64.b64decode(encoded))
    expected = provider_limits.fake_vector("abc", 16)
    assert decoded == pytest.approx(expected, rel=1e-6)


async def test_the_charge_is_the_input_only_and_limits_are_enforced() -> None:
    # 60 RPM on a 1 s burst: one request fits at once, the next is refused.
    async with (
        FakeProvider(limits={KEY: {MODEL: (60, 100_000)}}).running() as fake,
        httpx.AsyncClient(base_url=fake.url) as http,
    ):
        first = await embed(http, input=["x" * 401, "y" * 3], max_tokens=500)
        second = await embed(http, input="again")
        stats = fake.stats_for(KEY)
    assert first.status_code == 200
    assert stats["charged_tokens"] == math.ceil(404 / 4)  # no max_tokens, no output
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_exceeded"
    assert "retry-after" in second.headers
    assert fake.rate_limited == 1


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"input": ["a"] * 2049}, "input", "maximum length 2048"),
        ({"input": ["a " * 8193]}, "input", "maximum context length is 8192"),
        ({"input": [[5] * 8193]}, "input", "maximum context length is 8192"),
        ({"input": []}, "input", "'$.input' is invalid"),
        ({"input": ["ok", ""]}, "input", "'$.input' is invalid"),
        ({}, "input", "Missing required parameter"),
        ({"input": "a", "encoding_format": "hex"}, "encoding_format", "encoding_format"),
        ({"input": "a", "dimensions": 0}, "dimensions", "dimensions"),
    ],
)
async def test_requests_over_openai_s_limits_get_its_400(
    body: dict[str, Any], param: str, message: str
) -> None:
    async with (
        FakeProvider(default_limits=(600, 10_000_000)).running() as fake,
        httpx.AsyncClient(base_url=fake.url) as http,
    ):
        response = await embed(http, **body)
        stats = fake.stats_for(KEY)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and message in error["message"]
    assert stats["charged_tokens"] == 0


def _key(url: str, transport: str | None = None) -> KeyConfig:
    return KeyConfig(
        api_key=KEY,
        provider="openai",
        api_base=url,
        transport=transport,
        models={MODEL: {"rpm_limit": 600, "tpm_limit": 100_000}},
    )


@pytest.mark.parametrize("transport", ["openai_compat", "litellm"])
async def test_the_client_embeds_over_http_through_either_transport(transport: str) -> None:
    if transport == "litellm":
        litellm_provider._import_litellm()
    texts = [f"chunk {i}" for i in range(100)]
    async with FakeProvider(limits={KEY: {MODEL: (600, 100_000)}}).running() as fake:
        async with maxllm_gate(keys=[_key(fake.url, transport)]) as client:
            response = await client.embed(MODEL, texts, dimensions=32)
        stats = fake.stats_for(KEY)
    assert [len(v) for v in response.vectors] == [32] * 100
    assert response.vectors[42] == pytest.approx(provider_limits.fake_vector("chunk 42", 32))
    assert response.usage is not None and response.usage.prompt_tokens == 200
    assert stats["calls"] == 1 and stats["rate_limited"] == 0
    assert response.charged_tokens == stats["charged_tokens"]
    assert fake.request_sends == {response.request_id: 1}


async def test_litellm_embed_gets_the_rate_limit_headers() -> None:
    litellm_provider._import_litellm()
    provider = LiteLLMProvider()
    try:
        async with FakeProvider(limits={KEY: {MODEL: (600, 100_000)}}).running() as fake:
            call = ProviderCall(_key(fake.url), MODEL, (), {}, "req-l", input=["a", "b"])
            result = await provider.embed(call)
    finally:
        await provider.aclose()
    assert len(result.vectors) == 2
    assert result.headers["x-ratelimit-limit-tokens"] == "100000"
    assert "x-ratelimit-remaining-tokens" in result.headers
