"""Errors and models exactly as OpenAI's API answers them, over real HTTP, under both workers."""

from __future__ import annotations

import typing
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai.types.chat.completion_create_params import CompletionCreateParamsBase

from maxllm_gate.validation import ROLES
from tests.gateway.conftest import FAST, SLOW, STRICT, TOKEN, GatewayProcess

HELLO = [{"role": "user", "content": "Say hello"}]
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _post(gateway: GatewayProcess, **fields: Any) -> httpx.Response:
    body = {"model": FAST, "messages": HELLO, "max_tokens": 4, **fields}
    return httpx.post(gateway.url + "/v1/chat/completions", headers=AUTH, json=body)


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"messages": "hi"}, "messages", "invalid_type"),
        ({"messages": []}, "messages", "empty_array"),
        ({"messages": ["hi"]}, "messages[0]", "invalid_type"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
        (
            {"messages": [*HELLO, {"role": "user", "content": [{"type": "text"}]}]},
            "messages[1].content[0].text",
            "invalid_value",
        ),
        ({"n": True}, "n", "invalid_type"),
        ({"n": 2}, "n", "unsupported_value"),
        ({"temperature": 3}, "temperature", "decimal_above_max_value"),
        ({"temperature": -0.5}, "temperature", "decimal_below_min_value"),
        ({"temperature": "hot"}, "temperature", "invalid_type"),
        ({"temperature": False}, "temperature", "invalid_type"),
        ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
        ({"max_tokens": 1.5}, "max_tokens", "invalid_type"),
        ({"max_completion_tokens": True}, "max_completion_tokens", "invalid_type"),
        ({"stream": "yes"}, "stream", "invalid_type"),
    ],
)
def test_a_bad_request_names_its_param_and_code_as_openai_does(
    either_gateway: GatewayProcess, fields: dict[str, Any], param: str, code: str
) -> None:
    response = _post(either_gateway, **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert param in error["message"]


def test_the_official_client_sees_param_and_code(either_gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=either_gateway.url + "/v1", api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=FAST, messages=HELLO, temperature=2.5)
    assert (caught.value.param, caught.value.code) == ("temperature", "decimal_above_max_value")


def test_the_checked_types_are_those_of_openai_s_own_request_params() -> None:
    # What the gateway refuses by type, OpenAI's client declares with that type.
    hints = typing.get_type_hints(CompletionCreateParamsBase)
    assert hints["n"] == hints["max_tokens"] == hints["max_completion_tokens"] == int | None
    assert hints["temperature"] == float | None
    (message_union,) = typing.get_args(hints["messages"])  # Iterable[...]
    roles = {
        typing.get_args(typing.get_type_hints(kind)["role"])[0]
        for kind in typing.get_args(message_union)
    }
    assert roles == set(ROLES)
    assert typing.get_args(ChatCompletionMessageParam) == typing.get_args(message_union)


def test_every_role_of_openai_s_types_is_accepted(either_gateway: GatewayProcess) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert _post(either_gateway, messages=messages).status_code == 200


def test_model_not_found_names_no_configured_model(either_gateway: GatewayProcess) -> None:
    response = _post(either_gateway, model="no-such-model")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["message"] == (
        "The model `no-such-model` does not exist or you do not have access to it."
    )
    assert all(model not in response.text for model in (FAST, SLOW, STRICT))


def test_models_retrieve_works_with_the_official_client(either_gateway: GatewayProcess) -> None:
    client = openai.OpenAI(base_url=either_gateway.url + "/v1", api_key=TOKEN, max_retries=0)
    model = client.models.retrieve(FAST)
    assert (model.id, model.object) == (FAST, "model")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"
    assert FAST not in caught.value.message
    # A model name with a slash (a router's) is a name, not a path.
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("openrouter/no-such-model")
    assert httpx.get(either_gateway.url + f"/v1/models/{FAST}").status_code == 401
