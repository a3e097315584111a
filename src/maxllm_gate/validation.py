"""Chat requests, checked once at the door.

`validate_chat_request` turns what a caller hands to ``chat()`` into a frozen `ChatRequest`,
or raises `~maxllm_gate.errors.ValidationError` (also a ``ValueError``) naming the first bad
field, e.g. ``messages[2].content: must not be empty or whitespace-only``.

A value the caller gave is kept exactly (``temperature=0.0`` stays ``0.0``); ``None`` means
"not given" and the client applies its default later. Tool calls, tool results and multimodal
content are valid, and any parameter or message key we don't model is passed through.
The checks are attrs validators, so a `ChatMessage` or `ChatRequest` built by hand is checked
too; `build_chat_request` with ``validate=False`` normalises the same way but checks nothing.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from maxllm_gate.errors import ValidationError, show_value
from maxllm_gate.priority import PRIORITIES

__all__ = [
    "PRIORITIES",
    "ROLES",
    "ChatMessage",
    "ChatRequest",
    "build_chat_request",
    "validate_chat_request",
]

ROLES = ("system", "user", "assistant", "function", "tool", "developer")
MAX_MODEL_LENGTH = 256

# Provider-prefixed and path-like names ("accounts/fireworks/models/x", "ft:gpt-4o:org::id")
# are fine; whitespace, quotes and control characters never are.
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+\-]*")
_TEXT_ROLES = frozenset({"system", "user", "developer", "assistant"})  # str content not blank
_MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id", "function_call")
_REQUEST_FIELDS = frozenset(
    {"model", "messages", "temperature", "max_tokens", "priority", "stream", "extra"}
)
# object.__setattr__ is how attrs itself fills frozen slotted instances; the unchecked
# paths use it to skip the validators without touching attrs' process-wide switch.
_set = object.__setattr__


def _need_str(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{where}: must be a non-empty string, got {show_value(value)}")


def _need_dict(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{where}: must be a dict, got {type(value).__name__}")


def _to_tuple(value: Any) -> Any:
    """Converter: a list becomes a tuple; anything else is left for the validator."""
    return tuple(value) if isinstance(value, list) else value


# --- ChatMessage validators: field paths are relative to the message -----------------------


def _check_role(msg: ChatMessage, _attr: object, role: Any) -> None:
    if not isinstance(role, str) or role not in ROLES:
        raise ValidationError(f"role: must be one of {', '.join(ROLES)}; got {show_value(role)}")


def _check_parts(parts: tuple[Any, ...]) -> None:
    if not parts:
        raise ValidationError("content: a list of content parts must not be empty")
    for i, part in enumerate(parts):
        where = f"content[{i}]"
        _need_dict(part, where)
        kind = part.get("type")
        _need_str(kind, f"{where}.type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ValidationError(
                    f"{where}.text: a text part needs a non-blank string, got {show_value(text)}"
                )
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str) or not url:
                raise ValidationError(
                    f'{where}.image_url: an image part needs "image_url": {{"url": ...}}'
                )
        # Other part types (input_audio, file, ...) pass as-is: new modalities keep coming.


def _check_content(msg: ChatMessage, _attr: object, content: Any) -> None:
    role = msg.role
    # A tool-calling assistant turn may carry no text at all (OpenAI sends content: null).
    if isinstance(content, str):
        blank = not content.strip()
    else:
        blank = content is None or (isinstance(content, tuple) and not content)
    if blank and role == "assistant" and (msg.tool_calls or msg.function_call):
        return
    if isinstance(content, str):
        if role in _TEXT_ROLES and not content.strip():
            raise ValidationError("content: must not be empty or whitespace-only")
    elif isinstance(content, tuple):
        _check_parts(content)
    elif content is None:
        if role == "assistant":
            raise ValidationError(
                "content: an assistant message needs content unless it has tool_calls"
            )
        raise ValidationError(f"content: required for a {role} message")
    else:
        raise ValidationError(
            "content: must be a string, a list of content parts or None, "
            f"got {type(content).__name__}"
        )


def _check_name(msg: ChatMessage, _attr: object, name: Any) -> None:
    if name is not None:
        _need_str(name, "name")


def _check_tool_calls(msg: ChatMessage, _attr: object, calls: Any) -> None:
    if calls is None:
        return
    if not isinstance(calls, tuple):
        raise ValidationError(f"tool_calls: must be a list of dicts, got {type(calls).__name__}")
    if msg.role != "assistant":
        raise ValidationError(f"tool_calls: only assistant messages have them, not {msg.role}")
    if not calls:  # OpenAI rejects an empty array; leaving the key out means the same
        raise ValidationError("tool_calls: must not be empty (leave it out instead)")
    for i, call in enumerate(calls):
        where = f"tool_calls[{i}]"
        _need_dict(call, where)
        _need_str(call.get("id"), f"{where}.id")
        _need_str(call.get("type"), f"{where}.type")
        _need_dict(call.get("function"), f"{where}.function")
        _need_str(call["function"].get("name"), f"{where}.function.name")


def _check_tool_call_id(msg: ChatMessage, _attr: object, call_id: Any) -> None:
    if call_id is None and msg.role == "tool":
        raise ValidationError("tool_call_id: required for a tool message (the call it answers)")
    if call_id is not None:
        _need_str(call_id, "tool_call_id")


def _check_function_call(msg: ChatMessage, _attr: object, call: Any) -> None:
    if call is not None:
        _need_dict(call, "function_call")
        _need_str(call.get("name"), "function_call.name")


def _check_message_extra(msg: ChatMessage, _attr: object, extra: Any) -> None:
    _need_dict(extra, "extra")
    for key in _MESSAGE_FIELDS:
        if key in extra:
            raise ValidationError(f"extra: {key!r} is a field of its own; pass it as {key}=")


@attrs.frozen(slots=True)
class ChatMessage:
    """One chat message, in OpenAI's shape.

    List content (multimodal parts) and ``tool_calls`` are stored as tuples. Keys of a
    message dict that have no field here land in ``extra``, so nothing is lost.

    Raises:
      ValidationError: a field is malformed; the message names the field.
    """

    role: str = attrs.field(validator=_check_role)
    content: str | tuple[Mapping[str, Any], ...] | None = attrs.field(
        default=None, converter=_to_tuple, validator=_check_content
    )
    name: str | None = attrs.field(default=None, validator=_check_name)
    tool_calls: tuple[Mapping[str, Any], ...] | None = attrs.field(
        default=None, converter=_to_tuple, validator=_check_tool_calls
    )
    tool_call_id: str | None = attrs.field(default=None, validator=_check_tool_call_id)
    function_call: Mapping[str, Any] | None = attrs.field(
        default=None, validator=_check_function_call
    )
    extra: Mapping[str, Any] = attrs.field(factory=dict, validator=_check_message_extra)

    def to_dict(self) -> dict[str, Any]:
        """This message in OpenAI's wire format: plain dicts and lists, no None fields.

        ``"content": None`` is kept for an assistant message with tool calls, as OpenAI
        itself sends it. The keys of ``extra`` are merged in.
        """
        out: dict[str, Any] = {"role": self.role}
        content = self.content
        if isinstance(content, tuple):
            out["content"] = [dict(part) for part in content]
        elif content is not None or (
            self.role == "assistant" and (self.tool_calls or self.function_call)
        ):
            out["content"] = content
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls is not None:
            out["tool_calls"] = [dict(call) for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.function_call is not None:
            out["function_call"] = dict(self.function_call)
        for key, value in self.extra.items():
            out.setdefault(key, value)  # a field wins over a clashing extra key (unchecked only)
        return out


def _validate_message(msg: ChatMessage) -> None:
    """Run every validator of ChatMessage, in field order (spelled out: it is hot)."""
    content = msg.content
    if (  # the common plain text message: the checks below reduce to a non-blank content
        type(content) is str
        and type(msg.role) is str
        and msg.role in _TEXT_ROLES
        and msg.name is None
        and msg.tool_calls is None
        and msg.tool_call_id is None
        and msg.function_call is None
        and type(msg.extra) is dict
        and not msg.extra
        and not content.isspace()
        and content
    ):
        return
    _check_role(msg, None, msg.role)
    _check_content(msg, None, msg.content)
    _check_name(msg, None, msg.name)
    _check_tool_calls(msg, None, msg.tool_calls)
    _check_tool_call_id(msg, None, msg.tool_call_id)
    _check_function_call(msg, None, msg.function_call)
    _check_message_extra(msg, None, msg.extra)


def _message_unchecked(data: Mapping[str, Any]) -> ChatMessage:
    """Normalise a message dict into a ChatMessage without running any validator."""
    get = data.get
    msg = object.__new__(ChatMessage)
    _set(msg, "role", get("role"))
    content = get("content")
    _set(msg, "content", tuple(content) if type(content) is list else content)
    _set(msg, "name", get("name"))
    _set(msg, "tool_calls", _to_tuple(get("tool_calls")))
    _set(msg, "tool_call_id", get("tool_call_id"))
    _set(msg, "function_call", get("function_call"))
    if len(data) == 2 and "role" in data and "content" in data:
        _set(msg, "extra", {})  # the common {"role", "content"} message: skip the scan
    else:
        _set(msg, "extra", {k: v for k, v in data.items() if k not in _MESSAGE_FIELDS})
    return msg


# --- ChatRequest ---------------------------------------------------------------------------


def _to_messages(value: Any) -> Any:
    """Converter: a str is one user message; a sequence becomes a tuple of ChatMessage.

    Dicts are converted unchecked: the ``messages`` validator checks every message, so
    problems are reported in field order (the model first).
    """
    if isinstance(value, str):
        return (_message_unchecked({"role": "user", "content": value}),)
    if isinstance(value, (list, tuple)) or (
        isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray))
    ):
        return tuple(
            [
                _message_unchecked(m) if type(m) is dict or isinstance(m, Mapping) else m
                for m in value
            ]
        )
    return value


def _check_model(req: ChatRequest | None, _attr: object, model: Any) -> None:
    _need_str(model, "model")
    if len(model) > MAX_MODEL_LENGTH:
        raise ValidationError(f"model: must be at most {MAX_MODEL_LENGTH} characters long")
    if _MODEL_RE.fullmatch(model) is None:
        raise ValidationError(
            f"model: {show_value(model)} is not a model name; use only letters, digits and "
            "._:/@+- (starting with a letter or digit)"
        )


def _check_messages(req: ChatRequest, _attr: object, messages: Any) -> None:
    if not isinstance(messages, tuple):
        raise ValidationError(
            "messages: must be a non-empty string or a list of message dicts, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise ValidationError("messages: must not be empty")
    for i, msg in enumerate(messages):
        if not isinstance(msg, ChatMessage):
            raise ValidationError(
                f"messages[{i}]: must be a dict or ChatMessage, got {type(msg).__name__}"
            )
        try:
            _validate_message(msg)
        except ValidationError as exc:
            raise ValidationError(f"messages[{i}].{exc}") from None


def _check_temperature(req: ChatRequest, _attr: object, value: Any) -> None:
    if value is None or (type(value) is float and 0.0 <= value <= 2.0):
        return  # the common case, decided without the slow ABC isinstance
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValidationError(f"temperature: must be a number, got {type(value).__name__}")
    if not 0.0 <= float(value) <= 2.0:  # also rejects NaN
        raise ValidationError(f"temperature: must be between 0 and 2, got {value}")


def _check_max_tokens(req: ChatRequest, _attr: object, value: Any) -> None:
    if value is None or (type(value) is int and value >= 1):
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValidationError(f"max_tokens: must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValidationError(f"max_tokens: must be at least 1, got {value}")


def _check_priority(req: ChatRequest, _attr: object, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or value not in PRIORITIES):
        raise ValidationError(
            f"priority: must be one of {', '.join(PRIORITIES)}, got {show_value(value)}"
        )


def _check_stream(req: ChatRequest, _attr: object, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValidationError(f"stream: must be True or False, got {show_value(value)}")


# Where a call goes and with which credentials is the key's configuration, never the
# request's: LiteLLM would send the key's secret to a request-given api_base.
ROUTING_PARAMETERS = frozenset(
    {"api_key", "api_base", "base_url", "custom_llm_provider", "api_version"}
)


def check_routing_parameters(extra: Mapping[str, Any]) -> None:
    """Refuse a request that names its own endpoint or credentials (see ROUTING_PARAMETERS).

    Raises:
      ValidationError: it does.
    """
    routing = ROUTING_PARAMETERS.intersection(extra)
    if routing:
        key = min(routing)
        raise ValidationError(
            f"{key}: a request cannot choose where it is sent or with which credentials; "
            "set it on the key (KeyConfig) instead"
        )


def is_valid_timeout(value: object) -> bool:
    """Whether ``value`` is a request timeout: None, or a finite number of seconds above 0
    (not a bool), as ``REQUEST_TIMEOUT`` must be."""
    return value is None or (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _check_request_extra(req: ChatRequest, _attr: object, extra: Any) -> None:
    _need_dict(extra, "extra")
    if not extra:
        return
    clash = _REQUEST_FIELDS.intersection(extra)
    if clash:
        key = min(clash)
        raise ValidationError(f"{key}: given twice; pass it once, as the {key} argument")
    check_routing_parameters(extra)
    if extra.get("n", 1) not in (1, None):  # the response keeps one choice
        raise ValidationError(
            f"n: only 1 is supported, got {show_value(extra['n'])}; the other choices would be "
            "paid for and lost: send that many requests instead"
        )


@attrs.frozen(slots=True)
class ChatRequest:
    """A checked chat request, ready to schedule.

    ``None`` for ``temperature``, ``max_tokens`` and ``priority`` means "not given".
    ``extra`` holds every other OpenAI parameter (``top_p``, ``tools``, ``seed`` ...), to be
    passed to the provider unchanged; ``n`` must be 1 (the response holds one choice),
    and none may name an endpoint or credentials (see `ROUTING_PARAMETERS`).

    Raises:
      ValidationError: the first bad field, named by its path.
    """

    model: str = attrs.field(validator=_check_model)
    messages: tuple[ChatMessage, ...] = attrs.field(
        converter=_to_messages, validator=_check_messages
    )
    temperature: float | None = attrs.field(default=None, validator=_check_temperature)
    max_tokens: int | None = attrs.field(default=None, validator=_check_max_tokens)
    priority: str | None = attrs.field(default=None, validator=_check_priority)
    stream: bool = attrs.field(default=False, validator=_check_stream)
    extra: Mapping[str, Any] = attrs.field(factory=dict, validator=_check_request_extra)

    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages in OpenAI's wire format (see `ChatMessage.to_dict`)."""
        return [msg.to_dict() for msg in self.messages]


def validate_chat_request(
    model: str,
    messages: str | Sequence[Mapping[str, Any] | ChatMessage],
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    priority: str | None = None,
    stream: bool = False,
    **kwargs: Any,
) -> ChatRequest:
    """Check a chat request and return it as a frozen `ChatRequest`.

    A str ``messages`` becomes ``[{"role": "user", "content": messages}]``. Every other
    keyword argument is an OpenAI parameter and lands in ``extra`` unchanged.

    Raises:
      ValidationError: the first problem found, naming the field, e.g.
        ``temperature: must be between 0 and 2, got 3.5``.
    """
    if isinstance(messages, str) and not messages.strip():
        _check_model(None, None, model)  # report problems in field order
        raise ValidationError("messages: must not be empty or whitespace-only")
    return ChatRequest(
        model=model,
        messages=messages,
        temperature=temperature,
        max_tokens=max_tokens,
        priority=priority,
        stream=stream,
        extra=kwargs,
    )


def build_chat_request(
    model: str,
    messages: str | Sequence[Mapping[str, Any] | ChatMessage],
    *,
    validate: bool = True,
    temperature: float | None = None,
    max_tokens: int | None = None,
    priority: str | None = None,
    stream: bool = False,
    **kwargs: Any,
) -> ChatRequest:
    """Normalise the arguments of ``chat()`` into a `ChatRequest`.

    As `validate_chat_request`; with ``validate=False`` the same normalisation runs (str to
    a user message, dicts to `ChatMessage`, other keywords to ``extra``) but no check at
    all: the caller vouches for the input, and a provider may reject what it sends.

    Raises:
      ValidationError: only when ``validate`` is true: the first bad field.
    """
    if validate:
        return validate_chat_request(
            model,
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            priority=priority,
            stream=stream,
            **kwargs,
        )
    req = object.__new__(ChatRequest)
    _set(req, "model", model)
    _set(req, "messages", _to_messages(messages))
    _set(req, "temperature", temperature)
    _set(req, "max_tokens", max_tokens)
    _set(req, "priority", priority)
    _set(req, "stream", stream)
    _set(req, "extra", kwargs)
    return req
