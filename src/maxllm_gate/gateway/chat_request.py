"""Reading a ``POST /v1/chat/completions`` body as OpenAI does: its JSON, its
fields' types and ranges, named in OpenAI's error shape when wrong.

Pure functions over plain data, tested without a server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from maxllm_gate.priority import PRIORITIES
from maxllm_gate.validation import is_valid_timeout

__all__ = [
    "MAX_JSON_DEPTH",
    "ChatArgs",
    "WireError",
    "bad_request",
    "check_number",
    "invalid_type",
    "parse_chat",
    "read_json_object",
    "read_routing",
]

#: Arrays and objects nested deeper than this are refused (400) before anything else
#: reads them: past it, recursive code (JSON encoders, repr) would fail on them.
MAX_JSON_DEPTH = 100
# Parameters the gateway consumes itself instead of passing them to the provider.
_OWN_FIELDS = frozenset(
    {"model", "messages", "stream", "stream_options", "priority", "timeout", "max_tokens"}
    | {"max_completion_tokens", "temperature", "n"}
)


class WireError(Exception):
    """A request the gateway answers with an OpenAI error, before it reaches the client."""

    def __init__(self, status: int, message: str, *, type_: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.code = code
        self.param: str | None = None


def bad_request(message: str, param: str | None = None, code: str | None = None) -> WireError:
    """A 400 ``invalid_request_error``, naming the field at fault as ``param``."""
    error = WireError(400, message, type_="invalid_request_error", code=code)
    error.param = param
    return error


@attrs.frozen(slots=True)
class ChatArgs:
    """A chat completions request, as the client's ``chat()`` takes it."""

    model: str
    messages: Any
    max_tokens: int | None
    temperature: float | None
    priority: str | None
    timeout: float | None
    stream: bool
    include_usage: bool
    extra: Mapping[str, Any]


def parse_chat(body: bytes, priority_header: str | None = None) -> ChatArgs:
    """Read a ``POST /v1/chat/completions`` body.

    ``priority`` comes from the body's ``priority`` field, else the
    ``x-priority`` header; ``timeout`` (seconds) from the body.
    ``max_completion_tokens`` stands for ``max_tokens``. Every other field is
    passed to the provider unchanged (the client checks the messages).

    Raises:
      WireError: a 400 naming what is wrong.
    """
    data = read_json_object(body)
    model = data["model"]
    if "messages" not in data:
        raise bad_request(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    _check_messages(data["messages"])
    check_number(data, "n", int)
    n = data.get("n")
    if n is not None and n != 1:
        raise bad_request("Only n=1 is supported by this gateway.", "n", "unsupported_value")
    check_number(data, "temperature", float, 0, 2)
    for name in ("max_tokens", "max_completion_tokens"):
        check_number(data, name, int, 1)
    max_tokens = data.get("max_tokens")
    if max_tokens is None:
        max_tokens = data.get("max_completion_tokens")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid_type("stream", "a boolean", stream)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid_type("stream_options", "an object", options)
    priority, timeout = read_routing(data, priority_header)
    return ChatArgs(
        model=model,
        messages=data["messages"],
        max_tokens=max_tokens,
        temperature=data.get("temperature"),
        priority=priority,
        timeout=timeout,
        stream=bool(stream),
        include_usage=bool(stream and options and options.get("include_usage")),
        extra={k: v for k, v in data.items() if k not in _OWN_FIELDS},
    )


def read_json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object with a ``model`` string, nested at most
    `MAX_JSON_DEPTH` deep.

    Raises:
      WireError: a 400 naming what is wrong.
    """
    try:
        data = json.loads(body)
    except RecursionError:  # nested past the interpreter's own limit
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError):
        raise bad_request("We could not parse the JSON body of your request.") from None
    if _nests_deeper_than(data, body, MAX_JSON_DEPTH):
        raise _too_deep()
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("you must provide a model parameter", "model")
    return data


def read_routing(data: Mapping[str, Any], priority_header: str | None) -> tuple[str | None, Any]:
    """The gateway's own ``priority`` (the body's, else the ``x-priority`` header's) and
    ``timeout`` (seconds) of a request.

    Raises:
      WireError: a 400 naming what is wrong.
    """
    priority = data.get("priority")
    if priority is None and priority_header is not None:  # "priority": null is not given
        priority = priority_header.strip().lower()  # a header's value, as typed: High
    if priority is not None and priority not in PRIORITIES:
        raise bad_request(
            f"Invalid priority {priority!r}: must be one of {', '.join(PRIORITIES)}.",
            "priority",
            "invalid_value",
        )
    timeout = data.get("timeout")
    if not is_valid_timeout(timeout):
        raise bad_request("Invalid 'timeout': must be a positive number of seconds.", "timeout")
    return priority, timeout


# JSON's names for Python's types, as OpenAI's messages say them.
_JSON_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a decimal",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def invalid_type(param: str, expected: str, value: Any) -> WireError:
    got = _JSON_TYPES.get(type(value), type(value).__name__)
    return bad_request(
        f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
        param,
        "invalid_type",
    )


def _check_messages(messages: Any) -> None:
    """OpenAI's checks of the ``messages`` array itself; the client checks each message."""
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array of objects", messages)
    if not messages:
        raise bad_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_type(f"messages[{index}]", "an object", message)


def check_number(
    data: Mapping[str, Any],
    name: str,
    kind: type[int] | type[float],
    low: float | None = None,
    high: float | None = None,
) -> None:
    """``data[name]``, if given, is a JSON number of ``kind`` (true and false are not),
    from ``low`` to ``high``.

    Raises:
      WireError: a 400 in OpenAI's words, naming ``name``.
    """
    value = data.get(name)
    if value is None:
        return
    allowed = (int, float) if kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, allowed):
        raise invalid_type(name, _JSON_TYPES[kind], value)
    word = "integer" if kind is int else "decimal"
    if low is not None and value < low:
        raise bad_request(
            f"Invalid '{name}': {word} below minimum value. Expected a value >= {low:g}, "
            f"but got {value} instead.",
            name,
            f"{word}_below_min_value",
        )
    if high is not None and value > high:
        raise bad_request(
            f"Invalid '{name}': {word} above maximum value. Expected a value <= {high:g}, "
            f"but got {value} instead.",
            name,
            f"{word}_above_max_value",
        )


def _too_deep() -> WireError:
    return bad_request(
        f"The JSON body of your request nests arrays and objects more than {MAX_JSON_DEPTH} "
        "levels deep; no request needs that many."
    )


def _nests_deeper_than(data: Any, raw: bytes, limit: int) -> bool:
    """Whether ``data`` (parsed from ``raw``) nests containers more than ``limit`` deep.

    Walked a level at a time, without recursion; skipped when ``raw`` has too few
    brackets to get there. About 0.1 s for a 4 MB body of a million arrays.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    level = [data] if isinstance(data, dict | list) else []
    depth = 1
    while level:
        if depth > limit:
            return True
        below: list[Any] = []
        for value in level:
            if value:  # json.loads makes plain dicts and lists only
                items = value.values() if value.__class__ is dict else value
                below += [c for c in items if c.__class__ is dict or c.__class__ is list]
        level = below
        depth += 1
    return False
