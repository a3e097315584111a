"""LiteLLMProvider.embed: what it hands ``litellm.aembedding``, and what it makes of
the answer. Over real HTTP, against the fake provider, in tests/testing."""

from __future__ import annotations

from typing import Any

import pytest

from maxllm_gate.config import KeyConfig
from maxllm_gate.errors import TransientError
from maxllm_gate.providers import litellm_provider
from maxllm_gate.providers.base import ProviderCall
from maxllm_gate.responses import Usage

KEY = "sk-test-litellm-0123456789abcdef"
MODEL = "text-embedding-3-small"


@pytest.fixture(scope="module", autouse=True)
def litellm_loaded() -> None:
    litellm_provider._import_litellm()


def embed_call(url: str = "http://127.0.0.1:9/v1", **params: Any) -> ProviderCall:
    key = KeyConfig(
        api_key=KEY,
        provider="openai",
        models={MODEL: {"rpm_limit": 600, "tpm_limit": 100_000}},
        api_base=url,
    )
    return ProviderCall(key, MODEL, (), params, "req-e", input=["a", "b"])


def test_arguments_carry_the_input_and_no_messages() -> None:
    arguments = litellm_provider._arguments(embed_call(dimensions=64))
    assert arguments["input"] == ["a", "b"] and "messages" not in arguments
    assert arguments["model"] == f"openai/{MODEL}" and arguments["dimensions"] == 64
    assert arguments["num_retries"] == 0 and arguments["max_retries"] == 0
    assert arguments["extra_headers"] == {"x-client-request-id": "req-e"}


def test_an_answer_becomes_vectors_in_the_inputs_order() -> None:
    litellm = litellm_provider._import_litellm()
    raw = litellm.EmbeddingResponse(
        model=MODEL,
        data=[
            {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
            {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]},
        ],
        usage=litellm.Usage(prompt_tokens=2, completion_tokens=0, total_tokens=2),
    )
    result = litellm_provider._embedding_of(embed_call(), raw)
    assert result.vectors == [[1.0, 0.0], [0.0, 1.0]]
    assert result.usage == Usage(2, 0, 2)
    assert result.model == MODEL
    assert result.raw is raw


def test_an_answer_without_vectors_is_transient() -> None:
    litellm = litellm_provider._import_litellm()
    raw = litellm.EmbeddingResponse(model=MODEL, data=[{"object": "embedding", "index": 0}])
    with pytest.raises(TransientError, match="no embedding vectors") as caught:
        litellm_provider._embedding_of(embed_call(), raw)
    assert caught.value.key_id == embed_call().key.key_id
