"""OpenAI's wire format: writing completions, chunks and errors (reading a chat
request is `maxllm_gate.gateway.chat_request`'s, re-exported here).

Pure functions over plain data, so the format is tested without a server.
Nothing here ever sees an API key: responses name keys only by ``key_id``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from maxllm_gate._logging import redact
from maxllm_gate.errors import (
    BadRequestError,
    GateError,
    NoKeyAvailableError,
    ProviderError,
    QueueFullError,
    RateLimitError,
    RequestTimeoutError,
    RequestTooLargeError,
    ShutdownError,
    ValidationError,
)
from maxllm_gate.gateway.chat_request import ChatArgs, WireError, bad_request, parse_chat
from maxllm_gate.providers.base import StreamChunk
from maxllm_gate.responses import ChatResponse, Usage

__all__ = [
    "ChatArgs",
    "WireError",
    "chunk_event",
    "chunk_logprobs",
    "completion_body",
    "dumps",
    "error_body",
    "error_for",
    "model_not_found",
    "parse_chat",
    "usage_event",
]

DONE_EVENT = b"data: [DONE]\n\n"
_DELTA_FIELDS = ("role", "content", "tool_calls", "function_call", "refusal")


def dumps(data: Any) -> bytes:
    """Compact JSON bytes."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _usage(usage: Usage | None) -> dict[str, int] | None:
    return None if usage is None else usage.as_dict()


# What the provider's completion may hold beyond ChatResponse's fields, relayed as it
# came when it is there: top level, in the message, in the usage.
_COMPLETION_EXTRAS = ("system_fingerprint", "service_tier")
_MESSAGE_EXTRAS = ("refusal", "annotations", "audio")
_USAGE_EXTRAS = ("prompt_tokens_details", "completion_tokens_details")


def completion_body(response: ChatResponse, created: int) -> dict[str, Any]:
    """A ``chat.completion`` object for a finished `ChatResponse`.

    The provider's own ``logprobs``, ``system_fingerprint``, ``service_tier``,
    ``refusal`` and usage details pass through when it sent them
    (``response.raw``).
    """
    raw = response.raw
    choice = _first_choice(raw)
    message: dict[str, Any] = {"role": "assistant", "content": response.content}
    _copy(_field(choice, "message"), _MESSAGE_EXTRAS, message)
    if response.tool_calls:
        message["tool_calls"] = [dict(call) for call in response.tool_calls]
    body: dict[str, Any] = {
        "id": f"chatcmpl-{response.request_id}",
        "object": "chat.completion",
        "created": created,
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": _plain(_field(choice, "logprobs")),
                "finish_reason": response.finish_reason,
            }
        ],
        "usage": _usage(response.usage),
    }
    _copy(raw, _COMPLETION_EXTRAS, body)
    if body["usage"] is not None:
        _copy(_field(raw, "usage"), _USAGE_EXTRAS, body["usage"])
    return body


def _first_choice(raw: Any) -> Any:
    """The first choice of a provider's completion or chunk (a dict, or LiteLLM's object)."""
    choices = _field(raw, "choices")
    return choices[0] if isinstance(choices, list | tuple) and choices else None


def _field(source: Any, name: str) -> Any:
    """``source[name]`` of a JSON object, or the attribute of LiteLLM's object (else None)."""
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


def _copy(source: Any, names: tuple[str, ...], into: dict[str, Any]) -> None:
    for name in names:
        value = _plain(_field(source, name))
        if value is not None:
            into[name] = value


def _plain(value: Any) -> Any:
    """``value`` as JSON data: LiteLLM's pydantic objects dumped; None if it is neither."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            value = dump(exclude_none=True)
        except Exception:  # an odd object: leave it out rather than fail the answer
            return None
    if value is None or isinstance(value, Mapping | list | str | int | float | bool):
        return value
    return None


def chunk_delta(chunk: StreamChunk) -> dict[str, Any] | None:
    """The delta of ``chunk``'s first choice, or None if it has no choice (a usage chunk).

    Taken from the provider's own chunk when there is one, so tool-call
    fragments and the role pass through, whichever transport made it.
    """
    raw = chunk.raw
    delta: Any = None
    has_choice = False
    if isinstance(raw, Mapping):
        choices = raw.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
            has_choice = True
            delta = choices[0].get("delta")
    elif raw is not None:  # LiteLLM's pydantic chunk
        choices = getattr(raw, "choices", None)
        if choices:
            has_choice = True
            delta = getattr(choices[0], "delta", None)
            dump = getattr(delta, "model_dump", None)
            if callable(dump):
                try:
                    delta = dump(exclude_none=True)
                except Exception:  # an odd object: keep what StreamChunk parsed
                    delta = None
    out: dict[str, Any] = {}
    if isinstance(delta, Mapping):
        out = {name: delta[name] for name in _DELTA_FIELDS if delta.get(name) is not None}
    if chunk.text and "content" not in out:
        out["content"] = chunk.text
    if has_choice or out or chunk.finish_reason is not None:
        return out
    return None


def chunk_logprobs(chunk: StreamChunk) -> Any:
    """The ``logprobs`` of ``chunk``'s first choice, as the provider sent them (else None)."""
    return _plain(_field(_first_choice(chunk.raw), "logprobs"))


def _event(data: Mapping[str, Any]) -> bytes:
    return b"data: " + dumps(data) + b"\n\n"


def chunk_event(
    stream_id: str,
    created: int,
    model: str,
    delta: Mapping[str, Any],
    finish_reason: str | None,
    include_usage: bool,
    logprobs: Any = None,
) -> bytes:
    """One ``chat.completion.chunk`` server-sent event with one choice."""
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    chunk: dict[str, Any] = {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if include_usage:
        chunk["usage"] = None  # as OpenAI: null on every chunk but the last
    return _event(chunk)


def usage_event(stream_id: str, created: int, model: str, usage: Usage) -> bytes:
    """The last chunk of a stream asked for with ``stream_options.include_usage``."""
    return _event(
        {
            "id": stream_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage.as_dict(),
        }
    )


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    """OpenAI's error object, with any configured API key masked out of every field
    (a provider may echo the key in its code or param as well as its message)."""
    fields = {"message": message, "type": type_, "param": param, "code": code}
    return dumps({"error": {name: _redacted(value) for name, value in fields.items()}})


def _redacted(value: str | None) -> str | None:
    return None if value is None else redact(value)


# The client's validation messages start with the field they are about: "messages[0].role: ...".
_FIELD_PREFIX = re.compile(r"([a-z_]+(?:\[\d+\])*(?:\.[a-z_]+(?:\[\d+\])*)*): (.*)", re.DOTALL)


def _validation_error(message: str) -> WireError:
    """A 400 for the client's `ValidationError`, naming its field as ``param``, as OpenAI
    does (``messages[0].role``, ``temperature``)."""
    match = _FIELD_PREFIX.fullmatch(message)
    if match is None:
        return bad_request(message, code="invalid_value")
    param, problem = match.groups()
    code = "missing_required_parameter" if problem.startswith("required") else "invalid_value"
    return bad_request(f"Invalid '{param}': {problem}", param, code)


def model_not_found(model: str) -> WireError:
    """OpenAI's 404 for a model no configured key serves; it names no other model."""
    shown = model if len(model) <= 100 else model[:100] + "..."
    return WireError(
        404,
        f"The model `{shown}` does not exist or you do not have access to it.",
        type_="invalid_request_error",
        code="model_not_found",
    )


def error_for(exc: BaseException, *, known_model: bool = True, model: str = "") -> WireError:
    """The HTTP answer for an error of the client.

    A provider's 429 never reaches here as a 429: the client waits and retries
    those. Should one arrive anyway, it is a 503.
    """
    if isinstance(exc, WireError):
        return exc
    message = str(exc)
    if isinstance(exc, RequestTooLargeError):
        return WireError(400, message, type_="invalid_request_error", code="request_too_large")
    if isinstance(exc, ValidationError):
        return _validation_error(message)
    if isinstance(exc, QueueFullError):
        return WireError(503, message, type_="server_overloaded", code="queue_full")
    if isinstance(exc, ShutdownError):
        return WireError(503, message, type_="server_overloaded", code="shutting_down")
    if isinstance(exc, RequestTimeoutError):
        return WireError(504, message, type_="timeout", code="request_timeout")
    if isinstance(exc, NoKeyAvailableError):
        if known_model:
            return WireError(503, message, type_="server_overloaded", code="no_key_available")
        return model_not_found(model)
    if isinstance(exc, RateLimitError):  # the client hides these; never pass one on
        return WireError(503, message, type_="server_overloaded", code="rate_limited")
    if isinstance(exc, BadRequestError):  # the provider refused the request itself
        status = exc.status_code if exc.status_code and 400 <= exc.status_code < 500 else 400
        # The provider's own code and param, which clients branch on
        # (context_length_exceeded...); provider_rejected when it gave none.
        code = _redacted(exc.code) or "provider_rejected"
        error = WireError(status, message, type_="invalid_request_error", code=code)
        error.param = _redacted(exc.param)
        return error
    if isinstance(exc, ProviderError):  # retries spent, or no key left to try
        return WireError(502, message, type_="api_error", code="provider_error")
    if isinstance(exc, GateError):
        return WireError(500, message, type_="api_error", code=None)
    return WireError(500, "The gateway had an internal error.", type_="api_error")
