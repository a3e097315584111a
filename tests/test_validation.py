"""Chat request validation: every check, and what must pass through untouched."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maxllm_gate.errors import GateError, ValidationError
from maxllm_gate.validation import (
    PRIORITIES,
    ROLES,
    ChatMessage,
    ChatRequest,
    build_chat_request,
    validate_chat_request,
)

TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def rejects(match: str, *args: Any, **kwargs: Any) -> ValidationError:
    """Assert validate_chat_request(*args, **kwargs) fails with a message containing match."""
    with pytest.raises(ValidationError) as info:
        validate_chat_request(*args, **kwargs)
    assert match in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, GateError)
    return info.value


def user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


# --- model ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o-mini",
        "openai/gpt-4o",
        "accounts/fireworks/models/llama-v3-70b-instruct",
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "llama-3.1-70b-versatile",
        "ft:gpt-4o-mini:org:custom:abc123",
        "claude-3-5-sonnet@20241022",
        "x" * 256,
    ],
)
def test_valid_model_names(model: str) -> None:
    assert validate_chat_request(model, "hi").model == model


@pytest.mark.parametrize(
    "model",
    ["", "gpt 4", 'gpt"4', "gpt-4\n", "gpt-4;rm", "-gpt", "/gpt", "x" * 257, "gpt\t4", "ģpt"],
)
def test_invalid_model_names(model: str) -> None:
    rejects("model:", model, "hi")


@pytest.mark.parametrize("model", [None, 42, b"gpt-4", ["gpt-4"]])
def test_model_must_be_a_string(model: Any) -> None:
    rejects("model: must be a non-empty string", model, "hi")


# --- messages ------------------------------------------------------------------------------


def test_str_messages_become_one_user_message() -> None:
    request = validate_chat_request("gpt-4o", "Hello!")
    assert request.messages == (ChatMessage(role="user", content="Hello!"),)
    assert request.message_dicts() == [{"role": "user", "content": "Hello!"}]


@pytest.mark.parametrize("messages", ["", "   ", "\n\t"])
def test_blank_str_messages(messages: str) -> None:
    rejects("messages: must not be empty or whitespace-only", "gpt-4o", messages)


@pytest.mark.parametrize("messages", [[], ()])
def test_empty_message_list(messages: Any) -> None:
    rejects("messages: must not be empty", "gpt-4o", messages)


@pytest.mark.parametrize("messages", [None, 5, {"role": "user", "content": "hi"}, b"hi"])
def test_messages_of_the_wrong_type(messages: Any) -> None:
    rejects("messages: must be a non-empty string or a list", "gpt-4o", messages)


def test_message_items_must_be_dicts() -> None:
    rejects("messages[1]: must be a dict or ChatMessage, got str", "m", [user("a")[0], "b"])


@pytest.mark.parametrize("role", ROLES)
def test_every_role_is_accepted(role: str) -> None:
    message: dict[str, Any] = {"role": role, "content": "hello"}
    if role == "tool":
        message["tool_call_id"] = "call_1"
    assert validate_chat_request("gpt-4o", [message]).messages[0].role == role


@pytest.mark.parametrize("role", ["bot", "User", "", None])
def test_unknown_role(role: Any) -> None:
    error = rejects("messages[0].role: must be one of", "gpt-4o", [{"role": role, "content": "x"}])
    assert "developer" in str(error)


def test_missing_role() -> None:
    rejects("messages[0].role:", "gpt-4o", [{"content": "x"}])


@pytest.mark.parametrize("role", ["system", "user", "developer", "assistant"])
@pytest.mark.parametrize("content", ["", "   ", "\n"])
def test_blank_text_content(role: str, content: str) -> None:
    messages = [{"role": "user", "content": "ok"}, {"role": "user", "content": "ok"}]
    messages.append({"role": role, "content": content})
    rejects("messages[2].content: must not be empty or whitespace-only", "gpt-4o", messages)


@pytest.mark.parametrize("role", ["system", "user", "developer", "function"])
def test_content_is_required(role: str) -> None:
    rejects("messages[0].content: required", "gpt-4o", [{"role": role, "name": "f"}])


def test_assistant_without_content_or_tool_calls() -> None:
    messages = [*user("hi"), {"role": "assistant", "content": None}]
    rejects("messages[1].content: an assistant message needs content", "gpt-4o", messages)


def test_content_of_the_wrong_type() -> None:
    rejects("messages[0].content: must be a string, a list", "gpt-4o", user(42))


# --- tool calls and tool results -----------------------------------------------------------


def test_assistant_tool_call_with_null_content_is_valid() -> None:
    messages = [
        *user("Weather in Paris?"),
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    request = validate_chat_request("gpt-4o", messages)
    assistant, tool = request.messages[1], request.messages[2]
    assert assistant.content is None
    assert assistant.tool_calls == (TOOL_CALL,)
    assert tool.tool_call_id == "call_1"
    assert request.message_dicts() == messages


def test_assistant_with_legacy_function_call() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "f", "arguments": ""},
    }
    request = validate_chat_request("gpt-4o", [*user("hi"), message])
    assert request.message_dicts()[1] == message


def test_tool_message_may_have_empty_or_list_content() -> None:
    empty = {"role": "tool", "tool_call_id": "c", "content": ""}
    parts = {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "21C"}]}
    validate_chat_request("gpt-4o", [empty, parts])


def test_tool_message_needs_a_tool_call_id() -> None:
    rejects("messages[0].tool_call_id: required", "m", [{"role": "tool", "content": "x"}])
    message = {"role": "tool", "content": "x", "tool_call_id": ""}
    rejects("messages[0].tool_call_id: must be a non-empty string", "m", [message])


def test_tool_message_needs_content() -> None:
    rejects(
        "messages[0].content: required for a tool", "m", [{"role": "tool", "tool_call_id": "c"}]
    )


@pytest.mark.parametrize(
    ("tool_calls", "match"),
    [
        ("call", "tool_calls: must be a list of dicts"),
        ([], "tool_calls: must not be empty"),
        (["x"], "tool_calls[0]: must be a dict"),
        ([{**TOOL_CALL, "id": None}], "tool_calls[0].id:"),
        ([{**TOOL_CALL, "type": ""}], "tool_calls[0].type:"),
        ([{"id": "c", "type": "function"}], "tool_calls[0].function: must be a dict"),
        (
            [TOOL_CALL, {**TOOL_CALL, "function": {"arguments": "{}"}}],
            "tool_calls[1].function.name",
        ),
    ],
)
def test_malformed_tool_calls(tool_calls: Any, match: str) -> None:
    message = {"role": "assistant", "content": "calling", "tool_calls": tool_calls}
    rejects(f"messages[0].{match}", "gpt-4o", [message])


def test_only_assistants_have_tool_calls() -> None:
    message = {"role": "user", "content": "hi", "tool_calls": [TOOL_CALL]}
    rejects("messages[0].tool_calls: only assistant messages", "gpt-4o", [message])


def test_malformed_function_call() -> None:
    message = {"role": "assistant", "content": None, "function_call": {"arguments": "{}"}}
    rejects("messages[0].function_call.name", "gpt-4o", [message])


# --- multimodal content --------------------------------------------------------------------


def test_multimodal_list_content_is_valid_and_stored_as_tuple() -> None:
    parts = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "UklGR...", "format": "wav"}},
    ]
    request = validate_chat_request("gpt-4o", user(parts))
    assert request.messages[0].content == tuple(parts)
    assert request.message_dicts() == user(parts)


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ([], "content: a list of content parts must not be empty"),
        (["hello"], "content[0]: must be a dict"),
        ([{"text": "hi"}], "content[0].type: must be a non-empty string"),
        ([{"type": 3}], "content[0].type:"),
        ([{"type": "text", "text": "ok"}, {"type": "text", "text": " "}], "content[1].text"),
        ([{"type": "text"}], "content[0].text"),
        ([{"type": "image_url"}], "content[0].image_url"),
        ([{"type": "image_url", "image_url": {}}], "content[0].image_url"),
    ],
)
def test_malformed_content_parts(parts: Any, match: str) -> None:
    rejects(f"messages[0].{match}", "gpt-4o", user(parts))


def test_image_url_may_be_a_plain_string() -> None:
    validate_chat_request("gpt-4o", user([{"type": "image_url", "image_url": "https://x/y.png"}]))


# --- name ----------------------------------------------------------------------------------


def test_name_must_be_a_non_empty_string() -> None:
    rejects("messages[0].name:", "gpt-4o", [{"role": "user", "content": "hi", "name": ""}])
    rejects("messages[0].name:", "gpt-4o", [{"role": "user", "content": "hi", "name": 3}])


# --- sampling parameters -------------------------------------------------------------------


def test_given_values_are_kept_exactly() -> None:
    request = validate_chat_request("gpt-4o", "hi", temperature=0.0, max_tokens=4000)
    assert request.temperature == 0.0
    assert isinstance(request.temperature, float)
    assert request.max_tokens == 4000
    assert validate_chat_request("gpt-4o", "hi", max_tokens=1).max_tokens == 1


def test_missing_values_stay_none() -> None:
    request = validate_chat_request("gpt-4o", "hi")
    assert (request.temperature, request.max_tokens, request.priority) == (None, None, None)
    assert request.stream is False
    assert request.extra == {}


@pytest.mark.parametrize("temperature", [0, 0.0, 0.7, 1, 2, 2.0])
def test_valid_temperatures(temperature: float) -> None:
    assert validate_chat_request("m", "hi", temperature=temperature).temperature == temperature


@pytest.mark.parametrize("temperature", [-0.1, 2.01, 3.5, float("nan"), float("inf")])
def test_temperature_out_of_range(temperature: float) -> None:
    rejects("temperature: must be between 0 and 2", "m", "hi", temperature=temperature)


def test_temperature_message_says_what_was_given() -> None:
    rejects("temperature: must be between 0 and 2, got 3.5", "m", "hi", temperature=3.5)


@pytest.mark.parametrize("temperature", [True, False, "0.5", [0.5]])
def test_temperature_must_be_a_number(temperature: Any) -> None:
    rejects("temperature: must be a number", "m", "hi", temperature=temperature)


@pytest.mark.parametrize("max_tokens", [0, -1])
def test_max_tokens_must_be_positive(max_tokens: int) -> None:
    rejects("max_tokens: must be at least 1", "m", "hi", max_tokens=max_tokens)


@pytest.mark.parametrize("max_tokens", [True, 10.0, "10", 1.5])
def test_max_tokens_must_be_an_integer(max_tokens: Any) -> None:
    rejects("max_tokens: must be an integer", "m", "hi", max_tokens=max_tokens)


@pytest.mark.parametrize("priority", PRIORITIES)
def test_valid_priorities(priority: str) -> None:
    assert validate_chat_request("m", "hi", priority=priority).priority == priority


@pytest.mark.parametrize("priority", ["urgent", "HIGH", "", 1])
def test_invalid_priority(priority: Any) -> None:
    rejects("priority: must be one of high, medium, low", "m", "hi", priority=priority)


def test_stream_must_be_a_bool() -> None:
    assert validate_chat_request("m", "hi", stream=True).stream is True
    rejects("stream: must be True or False", "m", "hi", stream="yes")


# --- pass-through --------------------------------------------------------------------------


def test_other_openai_params_pass_through_unchanged() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    params: dict[str, Any] = {
        "top_p": 0.9,
        "stop": ["\n"],
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "seed": 7,
        "n": 1,
        "user": "u-1",
        "stream_options": {"include_usage": True},
        "provider_specific": object(),
    }
    request = validate_chat_request("gpt-4o", "hi", **params)
    assert dict(request.extra) == params
    assert request.extra["tools"] is tools  # untouched: the same object


def test_extra_cannot_shadow_a_field() -> None:
    for key in ("model", "messages", "temperature"):
        with pytest.raises(ValidationError, match=rf"^{key}: given twice"):
            ChatRequest(model="gpt-4o", messages="hi", extra={key: "x"})


def test_unknown_message_keys_are_kept() -> None:
    message = {"role": "assistant", "content": "hi", "refusal": None, "audio": {"id": "a1"}}
    request = validate_chat_request("gpt-4o", [*user("hey"), message])
    assert request.messages[1].extra == {"refusal": None, "audio": {"id": "a1"}}
    assert request.message_dicts()[1] == message


def test_message_extra_cannot_shadow_a_field() -> None:
    with pytest.raises(ValidationError, match="extra: 'role' is a field"):
        ChatMessage(role="user", content="hi", extra={"role": "system"})


# --- ChatMessage and ChatRequest directly --------------------------------------------------


def test_chat_message_objects_are_accepted_and_rechecked() -> None:
    good = ChatMessage(role="user", content="hi")
    assert validate_chat_request("gpt-4o", [good]).messages == (good,)
    unchecked = build_chat_request("gpt-4o", "   ", validate=False).messages[0]
    rejects("messages[0].content: must not be empty", "gpt-4o", [unchecked])


def test_chat_message_checks_itself() -> None:
    with pytest.raises(ValidationError, match=r"^content: must not be empty"):
        ChatMessage(role="user", content=" ")
    with pytest.raises(ValidationError, match=r"^role:"):
        ChatMessage(role="robot", content="hi")


def test_chat_message_converts_lists_to_tuples() -> None:
    message = ChatMessage(role="assistant", tool_calls=[TOOL_CALL])
    assert message.tool_calls == (TOOL_CALL,)
    parts = ChatMessage(role="user", content=[{"type": "text", "text": "hi"}])
    assert parts.content == ({"type": "text", "text": "hi"},)


def test_chat_message_to_dict() -> None:
    message = ChatMessage(role="user", content="hi", name="ann", extra={"x-trace": 1})
    assert message.to_dict() == {"role": "user", "content": "hi", "name": "ann", "x-trace": 1}


def test_to_dict_round_trip() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]
    dicts = validate_chat_request("gpt-4o", messages).message_dicts()
    assert dicts == messages
    # Wire format: plain lists, never our tuples.
    assert isinstance(dicts[1]["content"], list)
    assert isinstance(dicts[2]["tool_calls"], list)
    # And feeding the output back in gives an equal request.
    assert validate_chat_request("gpt-4o", dicts) == validate_chat_request("gpt-4o", messages)


def test_to_dict_omits_none_fields() -> None:
    assert ChatMessage(role="user", content="hi").to_dict() == {"role": "user", "content": "hi"}


def test_requests_are_frozen() -> None:
    request = validate_chat_request("gpt-4o", "hi")
    with pytest.raises(AttributeError):
        request.model = "other"  # type: ignore[misc]


# --- first problem first, and no foreign exceptions ---------------------------------------


def test_the_first_problem_is_reported() -> None:
    rejects("model:", "bad model", "   ", temperature=9)
    rejects("messages:", "gpt-4o", "   ", temperature=9)
    rejects("messages[1].", "gpt-4o", [*user("ok"), {"role": "x"}, {"role": "y"}])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": 1, "messages": 2},
        {"model": "m", "messages": [None]},
        {"model": "m", "messages": [{"role": "user", "content": {"a": 1}}]},
        {"model": "m", "messages": [{"role": "assistant", "tool_calls": 7}]},
        {"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [7]}]},
        {"model": "m", "messages": [{"role": "user", "content": [None]}]},
        {"model": "m", "messages": "hi", "temperature": object()},
        {"model": "m", "messages": "hi", "max_tokens": float("nan")},
        {"model": "m", "messages": [{"role": {"x": 1}, "content": "a"}]},
    ],
)
def test_garbage_raises_validation_error_only(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate_chat_request(**kwargs)


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_message_keys = st.sampled_from(
    ["role", "content", "name", "tool_calls", "tool_call_id", "function_call", "type", "x"]
)
_messages = st.lists(
    st.dictionaries(_message_keys, _json | st.sampled_from(ROLES), max_size=5) | _json,
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    model=_json | st.sampled_from(["gpt-4o", "a/b"]),
    messages=_messages | _json,
    temperature=_json,
    max_tokens=_json,
    priority=_json | st.sampled_from(PRIORITIES),
)
def test_any_input_gives_a_request_or_a_validation_error(
    model: Any, messages: Any, temperature: Any, max_tokens: Any, priority: Any
) -> None:
    try:
        request = validate_chat_request(
            model, messages, temperature=temperature, max_tokens=max_tokens, priority=priority
        )
    except ValidationError:
        return
    request.message_dicts()  # a valid request always renders


# --- validate=False ------------------------------------------------------------------------


def test_build_with_validation_checks() -> None:
    with pytest.raises(ValidationError):
        build_chat_request("gpt-4o", "hi", temperature=5)
    request = build_chat_request("gpt-4o", "hi", temperature=0.0, top_p=1)
    assert request == validate_chat_request("gpt-4o", "hi", temperature=0.0, top_p=1)


def test_build_without_validation_normalises_but_does_not_check() -> None:
    request = build_chat_request(
        "not a model!", "  ", validate=False, temperature=9, max_tokens=0, priority="x", seed=1
    )
    assert request.model == "not a model!"
    [message] = request.messages
    assert isinstance(message, ChatMessage)
    assert (message.role, message.content) == ("user", "  ")
    assert (request.temperature, request.max_tokens, request.priority) == (9, 0, "x")
    assert request.extra == {"seed": 1}


def test_build_without_validation_converts_dicts() -> None:
    parts = [{"type": "text", "text": "hi"}]
    messages: list[Any] = [
        {"role": "user", "content": parts, "x-custom": 1},
        ChatMessage("user", "b"),
    ]
    request = build_chat_request("gpt-4o", messages, validate=False)
    first = request.messages[0]
    assert isinstance(first, ChatMessage)
    assert first.content == tuple(parts)
    assert first.extra == {"x-custom": 1}
    assert request.messages[1] is messages[1]
    assert request.message_dicts()[0] == messages[0]
    # An unchecked request equals a checked one built from the same valid input.
    assert request == validate_chat_request("gpt-4o", messages)


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["api_base", "base_url", "api_key", "custom_llm_provider"])
async def test_a_request_cannot_redirect_the_key_or_replace_it(name: str) -> None:
    from maxllm_gate import SimulatedProvider, ValidationError, maxllm_gate
    from tests.support import MODEL, make_key

    async with maxllm_gate(keys=[make_key("k1", 60, 60_000)], provider=SimulatedProvider()) as c:
        for validate in (True, False):
            with pytest.raises(ValidationError, match=f"{name}: a request cannot choose"):
                await c.chat(MODEL, "hi", validate=validate, **{name: "http://evil.example"})


@pytest.mark.parametrize("n", [2, 0, "3"])
def test_more_than_one_choice_is_refused(n: Any) -> None:
    # The response keeps the first choice: the others would be paid for and lost.
    with pytest.raises(ValidationError, match="n: only 1 is supported"):
        validate_chat_request("gpt-4o-mini", "hi", n=n)
    assert validate_chat_request("gpt-4o-mini", "hi", n=1).extra == {"n": 1}
