"""The wire format, tokens and settings, without a server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from maxllm_gate import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    NoKeyAvailableError,
    QueueFullError,
    RateLimitError,
    RequestTimeoutError,
    ShutdownError,
    TransientError,
    ValidationError,
)
from maxllm_gate._logging import register_secret
from maxllm_gate.gateway import wire
from maxllm_gate.gateway.auth import TokenCheck
from maxllm_gate.gateway.metrics import ERROR_LABELS, error_label
from maxllm_gate.gateway.settings import GatewaySettings
from maxllm_gate.providers.base import StreamChunk
from maxllm_gate.responses import Usage

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def body(**fields: Any) -> bytes:
    return json.dumps({**BASE, **fields}).encode()


def test_parse_chat_takes_what_chat_needs_and_passes_the_rest_on() -> None:
    args = wire.parse_chat(
        body(max_completion_tokens=50, temperature=0.0, seed=7, tools=[], stream=False)
    )
    assert (args.model, args.max_tokens, args.temperature) == ("m", 50, 0.0)
    assert dict(args.extra) == {"seed": 7, "tools": []}
    assert not args.stream and not args.include_usage


def test_priority_in_the_body_wins_over_the_header() -> None:
    assert wire.parse_chat(body(), "high").priority == "high"
    assert wire.parse_chat(body(priority="low"), "high").priority == "low"
    assert wire.parse_chat(body(priority=None), "high").priority == "high"  # null: not given
    assert wire.parse_chat(body(), " HIGH ").priority == "high"  # a header as typed


def test_include_usage_only_counts_for_a_stream() -> None:
    options = {"include_usage": True}
    assert wire.parse_chat(body(stream=True, stream_options=options)).include_usage
    assert not wire.parse_chat(body(stream_options=options)).include_usage


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"[1]", None),
        (b"{", None),
        (json.dumps({"messages": []}).encode(), "model"),
        (json.dumps({"model": "m"}).encode(), "messages"),
        (body(n=3), "n"),
        (body(stream="yes"), "stream"),
        (body(priority="urgent"), "priority"),
        (body(timeout=-1), "timeout"),
        (body(timeout=True), "timeout"),
    ],
)
def test_malformed_requests_are_400s_naming_the_field(raw: bytes, param: str | None) -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.parse_chat(raw)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_a_provider_chunk_s_delta_passes_through_with_tool_calls() -> None:
    call = {"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{"}}
    raw = {"choices": [{"index": 0, "delta": {"tool_calls": [call], "extra": 1}}]}
    assert wire.chunk_delta(StreamChunk(raw=raw)) == {"tool_calls": [call]}


def test_a_provider_chunk_s_logprobs_pass_through() -> None:
    logprobs = {"content": [{"token": "hi", "logprob": -0.1, "bytes": [104, 105]}]}
    raw = {"choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": logprobs}]}
    assert wire.chunk_logprobs(StreamChunk(text="hi", raw=raw)) == logprobs
    assert wire.chunk_logprobs(StreamChunk(text="hi")) is None
    event = wire.chunk_event("id1", 5, "m", {"content": "hi"}, None, False, logprobs=logprobs)
    assert json.loads(event[6:])["choices"][0]["logprobs"] == logprobs


def test_a_usage_only_chunk_has_no_delta() -> None:
    raw = {"choices": [], "usage": {"prompt_tokens": 1}}
    assert wire.chunk_delta(StreamChunk(usage=Usage(1, 0), raw=raw)) is None
    assert wire.chunk_delta(StreamChunk(usage=Usage(1, 2))) is None


def test_a_pydantic_chunk_from_litellm_gives_its_delta() -> None:
    class Delta:
        def model_dump(self, exclude_none: bool = False) -> dict[str, Any]:
            return {"content": "hi", "role": "assistant", "provider_specific_fields": {}}

    class Choice:
        delta = Delta()

    class Chunk:
        def __init__(self) -> None:
            self.choices = [Choice()]

    delta = wire.chunk_delta(StreamChunk(text="hi", raw=Chunk()))
    assert delta == {"role": "assistant", "content": "hi"}


def test_a_chunk_without_a_raw_one_is_built_from_its_text() -> None:
    assert wire.chunk_delta(StreamChunk(text="abc")) == {"content": "abc"}
    assert wire.chunk_delta(StreamChunk(finish_reason="stop")) == {}


def test_chunk_events_are_server_sent_events() -> None:
    event = wire.chunk_event("id1", 5, "m", {"content": "x"}, None, include_usage=True)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    data = json.loads(event[6:])
    assert data["object"] == "chat.completion.chunk"
    assert data["usage"] is None
    usage = json.loads(wire.usage_event("id1", 5, "m", Usage(3, 4))[6:])
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 7


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValidationError("messages: bad"), 400),
        (QueueFullError("full"), 503),
        (ShutdownError("stopping"), 503),
        (RequestTimeoutError("late"), 504),
        (BadRequestError("no", status_code=422), 422),
        (BadRequestError("no", status_code=None), 400),
        (TransientError("down", status_code=500), 502),
        (AuthenticationError("revoked", status_code=401), 502),
        (RateLimitError("slow down", status_code=429), 503),  # never a 429
        (RuntimeError("bug"), 500),
    ],
)
def test_errors_map_to_their_status(error: Exception, status: int) -> None:
    assert wire.error_for(error).status == status


def test_a_rejected_request_keeps_the_provider_s_code_and_param() -> None:
    # Clients branch on them: context_length_exceeded is not any other 400.
    refused = BadRequestError(
        "too long", status_code=400, code="context_length_exceeded", param="messages"
    )
    error = wire.error_for(refused)
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "messages")
    plain = wire.error_for(BadRequestError("no", status_code=400))
    assert (plain.code, plain.param) == ("provider_rejected", None)


def test_no_key_for_a_model_is_404_if_unknown_else_503() -> None:
    error = NoKeyAvailableError("none")
    assert wire.error_for(error, known_model=False).status == 404
    assert wire.error_for(error, known_model=True).status == 503


def test_an_error_body_never_holds_a_registered_key() -> None:
    register_secret("sk-very-secret-wire-test")
    text = wire.error_body("provider said sk-very-secret-wire-test is bad", "api_error")
    assert b"sk-very-secret" not in text
    assert json.loads(text)["error"]["type"] == "api_error"


def test_a_provider_error_s_code_param_and_headers_are_scrubbed_of_the_key() -> None:
    key = "sk-echoed-in-every-field-0001"
    error = BadRequestError(
        f"bad {key}",
        status_code=400,
        code=f"code-{key}",
        param=f"messages[0].{key}",
        headers={"x-echo": key},
    ).scrub(key)
    assert key not in f"{error} {error.code} {error.param} {error.headers}"
    register_secret("sk-registered-echo-0002")  # the gateway's second line of defence
    raw = BadRequestError("x", status_code=400, code="c-sk-registered-echo-0002", param="p")
    answer = wire.error_for(raw)
    body = wire.error_body(str(answer), answer.type, answer.code, answer.param)
    assert b"sk-registered-echo" not in body
    assert answer.code == "c-<redacted>"


def test_error_labels_are_a_fixed_set() -> None:
    assert error_label("context_length_exceeded") == "context_length_exceeded"
    assert error_label("made_up_by_a_provider_sk-123") == "other"
    assert "other" not in ERROR_LABELS


def test_tokens_are_checked_as_bearer_tokens() -> None:
    check = TokenCheck(["a-token", "b-token"])
    assert check.allows("Bearer b-token")
    assert check.allows("bearer a-token")
    assert not check.allows("Bearer c-token")
    assert not check.allows("b-token")
    assert not check.allows(None)
    assert TokenCheck([], allow_unauthenticated=True).allows(None)
    # Tokens set: they are required even if running open was also asked for.
    assert not TokenCheck(["t"], allow_unauthenticated=True).allows(None)


def test_settings_come_from_the_environment() -> None:
    env = {"GATEWAY_API_KEYS": " tok-1, tok-2 ,", "GATEWAY_MAX_BODY_BYTES": "2048"}
    settings = GatewaySettings.from_env(env)
    assert settings.api_tokens == ("tok-1", "tok-2")
    assert settings.max_body_bytes == 2048
    assert settings.body_timeout == 60.0
    assert GatewaySettings.from_env({**env, "GATEWAY_BODY_TIMEOUT": "2.5"}).body_timeout == 2.5
    assert "tok-" not in repr(settings)


def test_settings_read_a_dotenv_file_under_the_environment(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("GATEWAY_API_KEYS=from-file\nGATEWAY_RETRY_AFTER=7\n")
    settings = GatewaySettings.from_env({"GATEWAY_RETRY_AFTER": "3"}, dotenv_path=dotenv)
    assert settings.api_tokens == ("from-file",)
    assert settings.retry_after == 3


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "GATEWAY_API_KEYS"),
        ({"GATEWAY_API_KEYS": "t", "GATEWAY_MAX_BODY_BYTES": "lots"}, "GATEWAY_MAX_BODY_BYTES"),
        ({"GATEWAY_API_KEYS": "t", "GATEWAY_WORKER_CLASS": "uvloop"}, "GATEWAY_WORKER_CLASS"),
        ({"GATEWAY_ALLOW_UNAUTHENTICATED": "sure"}, "GATEWAY_ALLOW_UNAUTHENTICATED"),
        ({"GATEWAY_API_KEYS": "t", "GATEWAY_BODY_TIMEOUT": "slow"}, "GATEWAY_BODY_TIMEOUT"),
        ({"GATEWAY_API_KEYS": "t", "GATEWAY_BODY_TIMEOUT": "0"}, "GATEWAY_BODY_TIMEOUT"),
        ({"GATEWAY_API_KEYS": "t", "GATEWAY_BODY_TIMEOUT": "nan"}, "GATEWAY_BODY_TIMEOUT"),
    ],
)
def test_bad_settings_name_their_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        GatewaySettings.from_env(env)


@pytest.mark.parametrize(
    "name", ["GATEWAY_MAX_BODY_BYTES", "GATEWAY_WORKER_CLASS", "GATEWAY_ALLOW_UNAUTHENTICATED"]
)
def test_a_bad_setting_is_not_echoed(name: str) -> None:
    # A key pasted into the wrong variable must not reach the logs through the error.
    pasted = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    with pytest.raises(ConfigError, match=name) as caught:
        GatewaySettings.from_env({"GATEWAY_API_KEYS": "t", name: pasted})
    assert "abcdefgh" not in str(caught.value)


def test_an_empty_setting_is_unset_and_the_dotenv_file_fills_it(tmp_path: Path) -> None:
    # As for the client's settings: an empty value counts as unset.
    dotenv = tmp_path / ".env"
    dotenv.write_text("GATEWAY_ALLOW_UNAUTHENTICATED=yes\n")
    settings = GatewaySettings.from_env({"GATEWAY_ALLOW_UNAUTHENTICATED": ""}, dotenv_path=dotenv)
    assert settings.allow_unauthenticated


# -- what the provider sent beyond ChatResponse's fields ------------------------------------


def _answer(raw: Any) -> Any:
    from maxllm_gate.responses import ChatResponse

    return ChatResponse(
        content="hi",
        model="gpt-4o-mini",
        usage=Usage(5, 2),
        finish_reason="stop",
        latency=0.1,
        llm_latency=0.1,
        queue_time=0.0,
        attempts=1,
        key_used="k1",
        request_id="r-1",
        raw=raw,
    )


LOGPROBS = {"content": [{"token": "hi", "logprob": -0.1, "bytes": [104, 105], "top_logprobs": []}]}


def test_a_completion_relays_the_provider_s_logprobs_fingerprint_and_usage_details() -> None:
    raw = {
        "system_fingerprint": "fp_1",
        "service_tier": "default",
        "choices": [{"message": {"content": "hi", "refusal": None}, "logprobs": LOGPROBS}],
        "usage": {"prompt_tokens_details": {"cached_tokens": 2}},
    }
    body = wire.completion_body(_answer(raw), created=1)
    assert body["system_fingerprint"] == "fp_1" and body["service_tier"] == "default"
    assert body["choices"][0]["logprobs"] == LOGPROBS
    assert "refusal" not in body["choices"][0]["message"]  # null: left out
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    assert body["usage"]["total_tokens"] == 7


def test_a_completion_without_the_provider_s_own_has_only_openai_s_fields() -> None:
    body = wire.completion_body(_answer(None), created=1)
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["choices"][0]["logprobs"] is None


def test_a_completion_relays_litellm_s_response_too() -> None:
    from maxllm_gate.providers.litellm_provider import _import_litellm

    litellm = _import_litellm()
    raw = litellm.ModelResponse(
        model="gpt-4o-mini",
        system_fingerprint="fp_2",
        choices=[
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hi"},
                "logprobs": LOGPROBS,
            }
        ],
        usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    )
    body = wire.completion_body(_answer(raw), created=1)
    json.dumps(body)  # JSON all through
    assert body["system_fingerprint"] == "fp_2"
    assert body["choices"][0]["logprobs"]["content"][0]["token"] == "hi"
