"""``POST /v1/embeddings`` through a real gateway process, with the official ``openai`` client."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest

from maxllm_gate.testing.provider_limits import fake_vector
from tests.gateway.conftest import (
    FAST_KEYS,
    TOKEN,
    GatewayProcess,
    keys_config,
    run_gateway,
)

EMBED = "text-embedding-3-small"


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def embed_gateway(
    request: pytest.FixtureRequest, fake_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway whose two keys serve an embedding model, under each worker class."""
    limits = {key: {EMBED: (6000, 6_000_000)} for key in FAST_KEYS}
    env = {
        "API_KEYS_CONFIG": keys_config(fake_url, limits),
        "GATEWAY_API_KEYS": TOKEN,
        "LOG_LEVEL": "INFO",
    }
    args = ["--worker-class", "trio"] if request.param == "trio" else []
    tmp = tmp_path_factory.mktemp(f"embed-gateway-{request.param}")
    with run_gateway(tmp, env, *args) as process:
        yield process


def client_for(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=TOKEN, max_retries=0, timeout=30)


def test_a_single_string(embed_gateway: GatewayProcess) -> None:
    # The openai client asks for base64 by default and decodes it itself.
    result = client_for(embed_gateway).embeddings.create(model=EMBED, input="hello world")
    assert len(result.data) == 1 and result.data[0].index == 0
    assert result.data[0].embedding == pytest.approx(fake_vector("hello world", 1536), rel=1e-6)
    assert result.model == EMBED
    assert result.usage.prompt_tokens == 2 and result.usage.total_tokens == 2


def test_a_list_of_100_strings_as_floats(embed_gateway: GatewayProcess) -> None:
    texts = [f"document chunk {i}" for i in range(100)]
    raw = client_for(embed_gateway).embeddings.with_raw_response.create(
        model=EMBED, input=texts, dimensions=64, encoding_format="float"
    )
    result = raw.parse()
    assert [d.index for d in result.data] == list(range(100))
    assert all(len(d.embedding) == 64 for d in result.data)
    assert result.data[57].embedding == fake_vector("document chunk 57", 64)
    assert result.usage.prompt_tokens == 300
    assert raw.headers["x-gate-key-id"] in ("k1", "k2")
    assert raw.headers["x-request-id"]


def test_base64_is_little_endian_float32(embed_gateway: GatewayProcess) -> None:
    result = client_for(embed_gateway).embeddings.create(
        model=EMBED, input=["abc", "def"], dimensions=8, encoding_format="base64"
    )
    encoded = result.data[1].embedding
    assert isinstance(encoded, str)
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    assert decoded == pytest.approx(fake_vector("def", 8), rel=1e-6)


def test_token_arrays(embed_gateway: GatewayProcess) -> None:
    result = client_for(embed_gateway).embeddings.create(
        model=EMBED, input=[[1, 2, 3], [4]], encoding_format="float"
    )
    assert result.data[0].embedding == fake_vector([1, 2, 3], 1536)
    assert result.usage.prompt_tokens == 4


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"input": []}, None, "invalid_value"),
        ({"input": ["a", ""]}, "input[1]", "invalid_value"),
        ({"input": ["a"] * 2049}, None, "request_too_large"),
        ({"input": "a", "encoding_format": "hex"}, "encoding_format", "invalid_value"),
        ({"input": "a", "dimensions": 0}, "dimensions", "integer_below_min_value"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(
    embed_gateway: GatewayProcess, kwargs: dict[str, object], param: str | None, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(embed_gateway).embeddings.create(model=EMBED, **kwargs)  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict)
    assert body.get("code") == code, body
    if param is not None:
        assert body.get("param") == param, body


def test_an_unknown_model_is_a_404_and_a_missing_token_a_401(
    embed_gateway: GatewayProcess,
) -> None:
    with pytest.raises(openai.NotFoundError):
        client_for(embed_gateway).embeddings.create(model="no-such-model", input="a")
    bare = httpx.post(embed_gateway.url + "/v1/embeddings", json={"model": EMBED, "input": "a"})
    assert bare.status_code == 401


def test_metrics_count_embeddings_per_model(embed_gateway: GatewayProcess) -> None:
    client_for(embed_gateway).embeddings.create(model=EMBED, input=["x", "y", "z"])
    metrics = httpx.get(
        embed_gateway.url + "/metrics", headers={"authorization": f"Bearer {TOKEN}"}
    ).text
    inputs = [
        line
        for line in metrics.splitlines()
        if line.startswith(f'maxllm_gate_embedding_inputs_total{{model="{EMBED}"}}')
    ]
    assert inputs and float(inputs[0].split()[-1]) >= 3
    assert any(
        line.startswith("maxllm_gate_requests_total") and f'model="{EMBED}"' in line
        for line in metrics.splitlines()
    )
