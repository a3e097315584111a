"""What the fake provider says, in OpenAI's wire format: request checks, answers, stream
chunks, errors and the duration format of its headers."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import attrs

from maxllm_gate.testing.provider_limits import (
    ModelLimiter,
    embedding_dimensions,
    embedding_inputs,
    embedding_request_problem,
    fake_vector,
)

JSON = ("content-type", "application/json")
STREAM = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
DONE = b"data: [DONE]\n\n"
WORD = "lorem "  # one token of generated text
CHUNK_TOKENS = 4  # tokens per streamed chunk
Headers = list[tuple[str, str]]


@attrs.define
class Call:
    """One admitted call (chat or embeddings), from admission to settlement."""

    api_key: str
    model: str
    prompt: int  # usage.prompt_tokens: the provider's own count
    charge: int  # what the limiter debits at admission
    max_tokens: int  # of one choice
    allowance: int  # the completion part of the charge: max_tokens times n
    completion: int
    stream: bool
    include_usage: bool
    meter: ModelLimiter | None
    body: dict[str, Any] = attrs.field(factory=dict, repr=False)
    answered: bool = False
    delivered: int = 0


# -- durations and numbers, as OpenAI's headers and messages write them -----------------------


def format_go_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration.String()``: "1s", "6m0s", "120ms", "1m30.5s".

    OpenAI's ``x-ratelimit-reset-*`` headers use this format. Negative values give "0s".
    """
    ns = max(0, round(seconds * 1e9))
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:  # below a second Go picks the largest unit that fits
        for unit, name in ((1_000_000, "ms"), (1_000, "µs"), (1, "ns")):
            if ns >= unit:
                return _with_fraction(ns, unit) + name
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = _with_fraction(rest, 10**9) + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text


def _with_fraction(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    digits = str(fraction).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def header_duration(seconds: float) -> str:
    # Whole milliseconds, like OpenAI's headers; rounded up so a client that waits it out fits.
    return format_go_duration(math.ceil(max(0.0, seconds) * 1000 - 1e-6) / 1000)


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# -- requests -----------------------------------------------------------------------------


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


#: The (type, code) of the error body of each status, as OpenAI sends them.
DEFAULT_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def parse_chat(raw: bytes) -> dict[str, Any] | bytes:
    """The request body, checked as far as the fake needs; or the body of a 400."""

    def invalid(message: str, param: str | None = None, code: str | None = None) -> bytes:
        return error_body(message, "invalid_request_error", code, param)

    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return invalid("We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return invalid("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return invalid("you must provide a model parameter", "model")
    messages = body.get("messages")
    if messages is None:
        return invalid(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        return invalid(
            "'messages' must be a non-empty array of objects.", "messages", "invalid_type"
        )
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (type(value) is not int or value < 1):
            return invalid(
                f"Invalid '{name}': must be an integer of at least 1.", name, "invalid_value"
            )
    if not isinstance(body.get("stream_options") or {}, dict):
        return invalid("Invalid type for 'stream_options'.", "stream_options", "invalid_type")
    return body


def parse_embeddings(raw: bytes) -> dict[str, Any] | bytes:
    """An embeddings request body, checked as OpenAI does; or the body of its 400."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return error_body(
            "We could not parse the JSON body of your request.", "invalid_request_error", None
        )
    if not isinstance(body, dict):
        return error_body("The request body must be a JSON object.", "invalid_request_error", None)
    if not isinstance(body.get("model"), str) or not body["model"]:
        return error_body(
            "you must provide a model parameter", "invalid_request_error", None, "model"
        )
    if "input" not in body:
        return error_body(
            "Missing required parameter: 'input'.",
            "invalid_request_error",
            "missing_required_parameter",
            "input",
        )
    if body.get("encoding_format", "float") not in ("float", "base64"):
        return error_body(
            "Invalid value for 'encoding_format': must be 'float' or 'base64'.",
            "invalid_request_error",
            "invalid_value",
            "encoding_format",
        )
    problem = embedding_request_problem(body)
    if problem is not None:
        message, param = problem
        return error_body(message, "invalid_request_error", None, param)
    return body


# -- answers ------------------------------------------------------------------------------


def completion(call: Call, completion_id: str, created: int) -> bytes:
    """The body of a whole (not streamed) chat completion."""
    answer = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": WORD * call.completion},
                "finish_reason": _finish(call),
            }
        ],
        "usage": _usage(call),
    }
    return json.dumps(answer).encode()


def text_chunk(chunk_id: str, created: int, call: Call, tokens: int, last: bool) -> bytes:
    """The event of a streamed chunk of ``tokens`` tokens (the first names the role)."""
    text = WORD * tokens
    delta = {"content": text} if call.delivered else {"role": "assistant", "content": text}
    choice = {"index": 0, "delta": delta, "finish_reason": _finish(call) if last else None}
    return _sse(_chunk(chunk_id, created, call, [choice]))


def usage_chunk(chunk_id: str, created: int, call: Call) -> bytes:
    """The stream's last event when ``stream_options.include_usage`` asked for it."""
    return _sse(_chunk(chunk_id, created, call, []) | {"usage": _usage(call)})


def embeddings(call: Call) -> bytes:
    """The body of an embeddings answer: a `fake_vector` per input, floats or base64."""
    body = call.body
    dimensions = embedding_dimensions(body)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(embedding_inputs(body)):
        vector: Any = fake_vector(item, dimensions)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    answer = {
        "object": "list",
        "data": data,
        "model": call.model,
        "usage": {"prompt_tokens": call.prompt, "total_tokens": call.prompt},
    }
    return json.dumps(answer).encode()


def _finish(call: Call) -> str:
    return "length" if call.completion >= call.max_tokens else "stop"


def _usage(call: Call) -> dict[str, int]:
    completion = call.delivered if call.stream else call.completion
    return {
        "prompt_tokens": call.prompt,
        "completion_tokens": completion,
        "total_tokens": call.prompt + completion,
    }


def _chunk(chunk_id: str, created: int, call: Call, choices: list[Any]) -> dict[str, Any]:
    chunk = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": call.model,
        "choices": choices,
    }
    if call.include_usage:
        chunk["usage"] = None  # OpenAI sends a null usage in every chunk but the last
    return chunk


def _sse(data: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"
