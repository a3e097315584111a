"""client.embed(): inputs, vectors, the charge of an embedding, the per-request limits."""

from __future__ import annotations

import math

import anyio
import pytest

from maxllm_gate import (
    BadRequestError,
    EmbeddingResponse,
    KeyConfig,
    RateLimitError,
    RequestTooLargeError,
    SimulatedProvider,
    ValidationError,
    maxllm_gate,
)
from maxllm_gate.testing import provider_limits
from tests.support import MODEL, make_key

EMBED_MODEL = "text-embedding-3-small"


def _key(key_id: str = "k0", rpm: int = 600, tpm: int = 60_000, **limits: object) -> object:
    return make_key(key_id, rpm, tpm, model=EMBED_MODEL, **limits)


@pytest.mark.anyio
async def test_a_string_gets_one_deterministic_unit_vector() -> None:
    provider = SimulatedProvider(latency=0.1)
    async with maxllm_gate(keys=[_key()], provider=provider) as client:
        first = await client.embed(EMBED_MODEL, "hello world")
        again = await client.embed(EMBED_MODEL, "hello world")
        other = await client.embed(EMBED_MODEL, "goodbye")
    assert isinstance(first, EmbeddingResponse)
    assert len(first.vectors) == 1 and first.dimensions == 1536
    assert math.isclose(sum(v * v for v in first.vectors[0]), 1.0, rel_tol=1e-9)
    assert first.vectors == again.vectors != other.vectors
    assert first.key_used == "k0" and first.request_id and first.attempts == 1
    assert first.usage is not None and first.usage.prompt_tokens == 2  # "hello", "world"
    assert first.usage.completion_tokens == 0
    assert first.llm_latency == pytest.approx(0.1)


@pytest.mark.anyio
async def test_lists_of_strings_and_token_arrays_keep_their_order_and_dimensions() -> None:
    provider = SimulatedProvider()
    texts = [f"chunk number {i}" for i in range(100)]
    async with maxllm_gate(keys=[_key()], provider=provider) as client:
        many = await client.embed(EMBED_MODEL, texts, dimensions=256)
        tokens = await client.embed(EMBED_MODEL, [[1, 2, 3], [4, 5]], dimensions=8)
        one_array = await client.embed(EMBED_MODEL, [1, 2, 3], dimensions=8)
    assert len(many.vectors) == 100 and many.dimensions == 256
    assert many.vectors[7] == provider_limits.fake_vector("chunk number 7", 256)
    assert tokens.vectors == [
        provider_limits.fake_vector([1, 2, 3], 8),
        provider_limits.fake_vector([4, 5], 8),
    ]
    assert one_array.vectors == tokens.vectors[:1]
    assert tokens.usage is not None and tokens.usage.prompt_tokens == 5


@pytest.mark.anyio
async def test_admission_charges_the_input_only() -> None:
    """ceil(characters / 4) of the strings plus the token arrays' lengths: no
    max_tokens, no output; the provider debits the same."""
    provider = SimulatedProvider()
    text = "x" * 401  # 101 tokens by characters
    async with maxllm_gate(keys=[_key()], provider=provider, default_max_tokens=500) as client:
        strings = await client.embed(EMBED_MODEL, [text, text])
        arrays = await client.embed(EMBED_MODEL, [[7] * 30, [8] * 12])
    assert strings.charged_tokens == math.ceil(802 / 4)
    assert arrays.charged_tokens == 42
    assert provider.stats["k0"].charged_tokens == math.ceil(802 / 4) + 42


@pytest.mark.anyio
async def test_per_request_limits_are_refused_at_submit_naming_the_setting() -> None:
    provider = SimulatedProvider()
    keys = [_key(max_embedding_inputs=4, max_embedding_input_tokens=10)]
    async with maxllm_gate(keys=keys, provider=provider) as client:
        with pytest.raises(RequestTooLargeError, match="max_embedding_inputs"):
            await client.embed(EMBED_MODEL, ["a"] * 5)
        with pytest.raises(RequestTooLargeError, match=r"input\[1\].*max_embedding_input_tokens"):
            await client.embed(EMBED_MODEL, ["short", "word " * 40])
        with pytest.raises(RequestTooLargeError, match=r"input\[0\]: 11 tokens"):
            await client.embed(EMBED_MODEL, [[1] * 11])
        ok = await client.embed(EMBED_MODEL, ["a"] * 4)
    assert len(ok.vectors) == 4
    assert sum(s.calls for s in provider.stats.values()) == 1  # nothing else was sent


@pytest.mark.anyio
async def test_the_defaults_are_openai_s_limits() -> None:
    provider = SimulatedProvider(enforce=False)
    async with maxllm_gate(keys=[_key(tpm=10_000_000)], provider=provider) as client:
        with pytest.raises(RequestTooLargeError, match="2049 inputs, over the 2048"):
            await client.embed(EMBED_MODEL, ["a"] * 2049)
        with pytest.raises(RequestTooLargeError, match="over the 8192"):
            await client.embed(EMBED_MODEL, ["a " * 8193])
        done = await client.embed(EMBED_MODEL, ["a"] * 2048, dimensions=4)
    assert len(done.vectors) == 2048


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "at least one input"),
        ("", r"input\[0\]: must not be an empty string"),
        (["a", 3], r"input\[1\]: must be a string"),
        ([[1], "a"], r"input\[1\]: must be a string or a token array"),
        ([[1], []], r"input\[1\]: a token array must be a non-empty list"),
        (42, "must be a string, a list of strings"),
    ],
)
@pytest.mark.anyio
async def test_malformed_input_is_a_validation_error(value: object, message: str) -> None:
    async with maxllm_gate(keys=[_key()], provider=SimulatedProvider()) as client:
        with pytest.raises(ValidationError, match=message):
            await client.embed(EMBED_MODEL, value)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="dimensions"):
            await client.embed(EMBED_MODEL, "a", dimensions=0)
        with pytest.raises(ValidationError, match="encoding_format"):
            await client.embed(EMBED_MODEL, "a", encoding_format="base64")


@pytest.mark.anyio
async def test_a_429_is_waited_out_and_retried_like_chat() -> None:
    provider = SimulatedProvider(send_headers=False)
    provider.inject(RateLimitError("slow down", status_code=429, retry_after=2.0))
    async with maxllm_gate(keys=[_key()], provider=provider) as client:
        start = anyio.current_time()
        response = await client.embed(EMBED_MODEL, "retry me")
    assert response.attempts == 2
    assert anyio.current_time() - start >= 2.0
    assert provider.sends[response.request_id] == 2


@pytest.mark.anyio
async def test_the_provider_s_400_reaches_the_caller() -> None:
    """A key configured above the provider's real limit: the provider refuses."""
    provider = SimulatedProvider()
    keys = [_key(max_embedding_inputs=4096)]
    async with maxllm_gate(keys=keys, provider=provider) as client:
        with pytest.raises(BadRequestError, match="maximum length 2048") as caught:
            await client.embed(EMBED_MODEL, ["a"] * 2049)
    assert caught.value.status_code == 400 and caught.value.param == "input"


@pytest.mark.anyio
async def test_embeddings_and_chat_share_a_key_s_limits() -> None:
    """A burst of both on one key: the provider sees no 429."""
    limits = {"rpm_limit": 60, "tpm_limit": 6_000}
    key = KeyConfig(
        api_key="sk-secret-k0-0123456789",
        provider="openai",
        key_id="k0",
        models={EMBED_MODEL: limits, MODEL: limits},
    )
    provider = SimulatedProvider(latency=0.05)
    client = maxllm_gate(keys=[key], provider=provider)
    async with client, anyio.create_task_group() as tg:
        for _ in range(40):
            tg.start_soon(client.embed, EMBED_MODEL, ["some text to embed " * 10] * 4)
            tg.start_soon(lambda: client.chat(MODEL, "hi", max_tokens=50))
    assert provider.rate_limited == 0
    assert provider.accepted == 80
