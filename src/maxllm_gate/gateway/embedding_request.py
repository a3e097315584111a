"""``POST /v1/embeddings``: reading its body as OpenAI does, and writing its answer.

The client checks the input itself (`maxllm_gate.embeddings`); here are the
fields the gateway reads (``model``, ``encoding_format``, ``dimensions``,
``priority``, ``timeout``) and OpenAI's answer. The provider is always asked
for floats; ``encoding_format: "base64"`` is answered as OpenAI answers it,
the vectors as little-endian float32, in base64. Pure functions over plain
data, tested without a server.
"""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from maxllm_gate.gateway.chat_request import (
    bad_request,
    check_number,
    read_json_object,
    read_routing,
)
from maxllm_gate.responses import EmbeddingResponse

__all__ = ["EmbeddingArgs", "embeddings_body", "parse_embeddings", "to_base64"]

_ENCODINGS = ("float", "base64")
# Fields the gateway consumes itself instead of passing them to the provider.
_OWN_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "priority", "timeout"})


@attrs.frozen(slots=True)
class EmbeddingArgs:
    """An embeddings request, as the client's ``embed()`` takes it."""

    model: str
    input: Any
    dimensions: int | None
    encoding_format: str
    priority: str | None
    timeout: float | None
    extra: Mapping[str, Any]


def parse_embeddings(body: bytes, priority_header: str | None = None) -> EmbeddingArgs:
    """Read a ``POST /v1/embeddings`` body; ``priority`` and ``timeout`` as for chat.

    Raises:
      WireError: a 400 naming what is wrong.
    """
    data = read_json_object(body)
    if "input" not in data:
        raise bad_request(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    encoding = data.get("encoding_format")
    if encoding is None:
        encoding = "float"
    if encoding not in _ENCODINGS:
        raise bad_request(
            f"Invalid value for 'encoding_format': {encoding!r}; must be 'float' or 'base64'.",
            "encoding_format",
            "invalid_value",
        )
    check_number(data, "dimensions", int, 1)
    priority, timeout = read_routing(data, priority_header)
    return EmbeddingArgs(
        model=data["model"],
        input=data["input"],
        dimensions=data.get("dimensions"),
        encoding_format=encoding,
        priority=priority,
        timeout=timeout,
        extra={k: v for k, v in data.items() if k not in _OWN_FIELDS},
    )


def to_base64(vector: Sequence[float]) -> str:
    """A vector as OpenAI's ``base64`` encoding: little-endian float32, in base64."""
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def embeddings_body(response: EmbeddingResponse, encoding_format: str) -> dict[str, Any]:
    """OpenAI's answer to an embeddings request: a list of vectors, in the inputs' order."""
    encode = to_base64 if encoding_format == "base64" else list
    usage = response.usage
    prompt = usage.prompt_tokens if usage is not None else 0
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encode(vector)}
            for index, vector in enumerate(response.vectors)
        ],
        "model": response.model,
        "usage": {"prompt_tokens": prompt, "total_tokens": usage.total_tokens if usage else 0},
    }
