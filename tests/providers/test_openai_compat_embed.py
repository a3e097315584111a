"""OpenAICompatProvider.embed, against httpx's MockTransport (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from maxllm_gate.config import KeyConfig
from maxllm_gate.errors import BadRequestError, RateLimitError, TransientError
from maxllm_gate.providers.base import ProviderCall
from maxllm_gate.responses import Usage
from tests.providers.test_openai_compat import API_KEY, assert_no_key, provider_for

MODEL = "text-embedding-3-small"


def embed_call(input: Any = "hello", *, api_base: str | None = None, **params: Any) -> ProviderCall:
    key = KeyConfig(
        api_key=API_KEY,
        provider="openai",
        key_id="k1",
        api_base=api_base,
        models={MODEL: {"rpm_limit": 60, "tpm_limit": 10_000}},
    )
    return ProviderCall(
        key=key, model=MODEL, messages=(), params=params, request_id="req-9", input=input
    )


def embeddings(*vectors: list[float], order: list[int] | None = None) -> dict[str, Any]:
    indexes = order or list(range(len(vectors)))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vectors[i]} for i in indexes],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("api_base", "url"),
    [
        (None, "https://api.openai.com/v1/embeddings"),
        ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080/v1/embeddings"),
    ],
)
async def test_an_embedding_posts_its_input_to_embeddings_asking_for_floats(
    api_base: str | None, url: str
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=embeddings([0.5, 0.5]))

    call = embed_call(["a", "b"], api_base=api_base, dimensions=2, user="u1")
    await provider_for(handler).embed(call)
    (request,) = seen
    assert str(request.url) == url
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["x-client-request-id"] == "req-9"
    assert json.loads(request.content) == {
        "model": MODEL,
        "input": ["a", "b"],
        "dimensions": 2,
        "user": "u1",
        "encoding_format": "float",
    }


@pytest.mark.anyio
async def test_chat_and_embeddings_of_one_base_go_to_their_own_paths() -> None:
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(request.url.path)
        if request.url.path.endswith("/embeddings"):
            return httpx.Response(200, json=embeddings([1.0]))
        return httpx.Response(200, json={"choices": [{"message": {"content": "x"}}]})

    provider = provider_for(handler)
    chat = ProviderCall(
        key=embed_call().key,
        model=MODEL,
        messages=[{"role": "user", "content": "x"}],
        params={},
        request_id="r",
    )
    await provider.embed(embed_call())
    await provider.complete(chat)
    await provider.embed(embed_call())
    assert urls == ["/v1/embeddings", "/v1/chat/completions", "/v1/embeddings"]


@pytest.mark.anyio
async def test_vectors_come_back_in_the_inputs_order_with_usage_and_headers() -> None:
    headers = {"x-ratelimit-remaining-tokens": "9000", "X-RateLimit-Limit-Tokens": "10000"}
    body = embeddings([0.0, 1.0], [1.0, 0.0], [0.6, 0.8], order=[2, 0, 1])
    provider = provider_for(lambda request: httpx.Response(200, json=body, headers=headers))
    result = await provider.embed(embed_call(["x", "y", "z"]))
    assert result.vectors == [[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]]
    assert result.usage == Usage(4, 0, 4)
    assert result.model == "text-embedding-3-small"
    assert result.headers["x-ratelimit-remaining-tokens"] == "9000"
    assert result.headers["x-ratelimit-limit-tokens"] == "10000"
    assert result.raw == body


@pytest.mark.anyio
async def test_errors_are_classified_as_for_chat_and_hold_no_key() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": f"bad key {API_KEY}", "code": "rate_limit_exceeded"}}
        return httpx.Response(429, json=body, headers={"retry-after": "2"})

    with pytest.raises(RateLimitError) as limited:
        await provider_for(refuse).embed(embed_call())
    assert limited.value.retry_after == 2.0 and limited.value.key_id == "k1"
    assert_no_key(limited.value)

    too_long = {"error": {"message": "'$.input' is too long", "param": "input", "code": None}}
    provider = provider_for(lambda request: httpx.Response(400, json=too_long))
    with pytest.raises(BadRequestError, match="too long") as bad:
        await provider.embed(embed_call())
    assert bad.value.param == "input"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [[1, 2], {"data": [{"index": 0}]}, {"data": "nope"}, {"object": "list"}],
)
async def test_an_answer_without_vectors_is_transient(body: Any) -> None:
    provider = provider_for(lambda request: httpx.Response(200, json=body))
    with pytest.raises(TransientError):
        await provider.embed(embed_call())


@pytest.mark.anyio
async def test_an_error_in_a_2xx_body_is_raised() -> None:
    body = {"error": {"message": "overloaded", "code": 503}}
    provider = provider_for(lambda request: httpx.Response(200, json=body))
    with pytest.raises(TransientError, match="overloaded"):
        await provider.embed(embed_call())
