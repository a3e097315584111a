"""The native OpenAI-compatible transport, against httpx's MockTransport (no sockets)."""

from __future__ import annotations

import gc
import json
import traceback
import warnings
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from maxllm_gate.config import KeyConfig
from maxllm_gate.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    TransientError,
)
from maxllm_gate.providers.base import Provider, ProviderCall, StreamChunk
from maxllm_gate.providers.http11 import Http11Transport
from maxllm_gate.providers.openai_compat import BASE_URLS, OpenAICompatProvider
from maxllm_gate.responses import Usage

API_KEY = "sk-test-DO-NOT-LEAK-0123456789"
MODEL = "gpt-4o-mini"
Handler = Callable[[httpx.Request], Any]


def make_call(
    *, provider: str = "openai", api_base: str | None = None, **params: Any
) -> ProviderCall:
    key = KeyConfig(
        api_key=API_KEY,
        provider=provider,
        key_id="k1",
        api_base=api_base,
        models={MODEL: {"rpm_limit": 60, "tpm_limit": 10_000}},
    )
    return ProviderCall(
        key=key,
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        params={"max_tokens": 50, "temperature": 0.0, **params},
        request_id="req-1",
    )


def provider_for(handler: Handler) -> OpenAICompatProvider:
    return OpenAICompatProvider(client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def completion(**message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }


def sse(*events: dict[str, Any] | str) -> list[bytes]:
    return [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events]


def delta(text: str | None, finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    return {"object": "chat.completion.chunk", "choices": [choice]}


async def body_of(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        await anyio.lowlevel.checkpoint()
        yield part


def streaming(
    parts: Iterable[bytes], headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        all_headers = {"content-type": "text/event-stream", **(headers or {})}
        return httpx.Response(200, headers=all_headers, content=body_of(parts))

    return handler


async def read_stream(provider: OpenAICompatProvider, call: ProviderCall) -> list[StreamChunk]:
    stream = await provider.open_stream(call)
    try:
        return [chunk async for chunk in stream]
    finally:
        await stream.aclose()


def assert_no_key(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc)) + repr(exc) + str(vars(exc))
    current: BaseException | None = exc
    while current is not None:
        text += repr(current) + str(current)
        current = current.__cause__ or current.__context__
    assert API_KEY not in text


def test_it_implements_the_provider_protocol() -> None:
    provider: Provider = OpenAICompatProvider()
    assert provider is not None


def test_supports_keys_with_an_api_base_or_a_known_provider() -> None:
    assert OpenAICompatProvider.supports(make_call(provider="groq").key)
    assert OpenAICompatProvider.supports(make_call(provider="local", api_base="http://x/v1").key)
    assert not OpenAICompatProvider.supports(make_call(provider="local").key)


# -- the request ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("provider", "api_base", "url"),
    [
        ("local", "http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080/v1/chat/completions"),
        ("openai", None, "https://api.openai.com/v1/chat/completions"),
        ("groq", None, "https://api.groq.com/openai/v1/chat/completions"),
        ("together_ai", None, f"{BASE_URLS['together_ai']}/chat/completions"),
    ],
)
async def test_a_call_posts_the_chat_request_to_the_keys_base_url(
    provider: str, api_base: str | None, url: str
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=completion(content="hello"))

    call = make_call(provider=provider, api_base=api_base, tools=[{"type": "function"}])
    await provider_for(handler).complete(call)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == url
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 50,
        "temperature": 0.0,
        "tools": [{"type": "function"}],
    }


@pytest.mark.anyio
async def test_a_key_with_no_base_url_is_a_config_error_naming_it() -> None:
    provider = provider_for(lambda request: httpx.Response(200))
    with pytest.raises(ConfigError, match=r"key k1: .*'local'.*set api_base"):
        await provider.complete(make_call(provider="local"))


@pytest.mark.anyio
async def test_a_body_that_is_not_json_is_a_bad_request() -> None:
    provider = provider_for(lambda request: httpx.Response(200))
    with pytest.raises(BadRequestError, match="not JSON-serializable"):
        await provider.complete(make_call(user=object()))


@pytest.mark.anyio
async def test_a_stream_asks_for_usage_and_keeps_the_callers_stream_options() -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return streaming(sse("[DONE]"))(request)

    provider = provider_for(handler)
    await read_stream(provider, make_call())
    await read_stream(provider, make_call(stream_options={"include_usage": False, "x": 1}))
    assert bodies[0]["stream"] is True
    assert bodies[0]["stream_options"] == {"include_usage": True}
    assert bodies[1]["stream_options"] == {"include_usage": True, "x": 1}


# -- answers ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_completion_is_parsed_with_its_usage_and_headers() -> None:
    headers = {"X-RateLimit-Remaining-Requests": "59", "x-request-id": "abc"}
    provider = provider_for(
        lambda request: httpx.Response(200, json=completion(content="hello"), headers=headers)
    )
    response = await provider.complete(make_call())
    assert response.content == "hello"
    assert response.finish_reason == "stop"
    assert response.usage == Usage(9, 3, 12)
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.headers["x-ratelimit-remaining-requests"] == "59"
    assert response.headers["x-request-id"] == "abc"
    assert response.tool_calls is None


@pytest.mark.anyio
async def test_tool_calls_are_returned_as_a_tuple() -> None:
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    provider = provider_for(
        lambda request: httpx.Response(200, json=completion(content=None, tool_calls=[tool_call]))
    )
    response = await provider.complete(make_call())
    assert response.content is None
    assert response.tool_calls == (tool_call,)


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"<html>oops</html>", b"[1, 2]", b"\xff\xfe"])
async def test_a_2xx_answer_that_is_not_a_json_object_is_transient(body: bytes) -> None:
    provider = provider_for(lambda request: httpx.Response(200, content=body))
    with pytest.raises(TransientError):
        await provider.complete(make_call())


# -- streams ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_stream_parses_events_split_across_reads() -> None:
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    raw = b"".join(
        [
            b": keep-alive comment\n\n",
            *sse(delta("Hel"), delta(None), delta("lo", "stop")),
            b"event: ignored\r\ndata: " + json.dumps({"choices": [], "usage": usage}).encode(),
            b"\r\n\r\n",
            *sse("[DONE]", delta("after done")),
        ]
    )
    pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]  # lines cut anywhere
    provider = provider_for(streaming(pieces, headers={"x-ratelimit-remaining-tokens": "100"}))
    stream = await provider.open_stream(make_call())
    assert stream.headers["x-ratelimit-remaining-tokens"] == "100"
    chunks = [chunk async for chunk in stream]
    await stream.aclose()
    assert [c.text for c in chunks] == ["Hel", "", "lo", ""]
    assert [c.finish_reason for c in chunks] == [None, None, "stop", None]
    assert chunks[-1].usage == Usage(9, 2, 11)
    assert chunks[-1].raw == {"choices": [], "usage": usage}


@pytest.mark.anyio
async def test_a_stream_without_done_ends_with_its_body() -> None:
    raw = b"".join(sse(delta("a"))) + b"data: " + json.dumps(delta("b")).encode()
    chunks = await read_stream(provider_for(streaming([raw])), make_call())
    assert [c.text for c in chunks] == ["a", "b"]


@pytest.mark.anyio
async def test_an_event_split_over_several_data_lines_is_joined() -> None:
    text = json.dumps(delta("multi"), indent=1)
    raw = "".join(f"data: {line}\n" for line in text.splitlines()) + "\ndata: [DONE]\n\n"
    chunks = await read_stream(provider_for(streaming([raw.encode()])), make_call())
    assert [c.text for c in chunks] == ["multi"]


@pytest.mark.anyio
async def test_an_error_event_in_a_stream_raises_the_classified_error() -> None:
    error = {"error": {"code": 429, "message": "slow down", "type": "rate_limit"}}
    provider = provider_for(streaming(sse(delta("a"), error)))
    stream = await provider.open_stream(make_call())
    with pytest.raises(RateLimitError, match="slow down"):
        async for _ in stream:
            pass
    await stream.aclose()


@pytest.mark.anyio
async def test_an_invalid_event_is_transient() -> None:
    with pytest.raises(TransientError, match="invalid stream event"):
        await read_stream(provider_for(streaming([b"data: {nope\n\n"])), make_call())


@pytest.mark.anyio
async def test_a_stream_closed_early_finalizes_every_generator_and_response() -> None:
    closed = anyio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            yield b"".join(sse(delta("first")))
            await anyio.sleep_forever()
            yield b""  # pragma: no cover
        finally:
            closed.set()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    provider = provider_for(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = await provider.open_stream(make_call())
        async for chunk in stream:
            assert chunk.text == "first"
            break
        await stream.aclose()
        await stream.aclose()  # idempotent
        assert closed.is_set()  # httpx's generators and ours all ran their cleanup
        assert [c async for c in stream] == []
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.anyio
async def test_a_stream_closed_before_reading_closes_its_response() -> None:
    provider = provider_for(streaming(sse(delta("x"), "[DONE]")))
    stream = await provider.open_stream(make_call())
    await stream.aclose()
    assert stream._response.is_closed
    assert [c async for c in stream] == []


# -- errors -----------------------------------------------------------------------------


def error_body(code: str | None, message: str = "nope") -> dict[str, Any]:
    return {"error": {"message": message, "type": "error", "code": code}}


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (429, error_body("rate_limit_exceeded"), {"retry-after": "7"}, RateLimitError),
        (429, error_body("insufficient_quota"), {}, QuotaExceededError),
        (401, error_body("invalid_api_key"), {}, AuthenticationError),
        (403, None, {}, AuthenticationError),
        (400, error_body(None, "bad"), {}, BadRequestError),
        (404, error_body("model_not_found"), {}, BadRequestError),
        (500, None, {}, TransientError),
        (503, error_body(None), {}, TransientError),
    ],
)
async def test_an_error_status_raises_its_classified_error(
    stream: bool,
    status: int,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    expected: type[ProviderError],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, content=b"<html>oops</html>", headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    provider = provider_for(handler)
    with pytest.raises(ProviderError) as info:
        if stream:
            await provider.open_stream(make_call())
        else:
            await provider.complete(make_call())
    error = info.value
    assert type(error) is expected
    assert error.status_code == status
    assert error.key_id == "k1"
    if status == 429 and expected is RateLimitError:
        assert error.retry_after == 7.0
        assert error.headers["retry-after"] == "7"


@pytest.mark.anyio
async def test_a_key_echoed_in_an_error_body_is_scrubbed() -> None:
    body = error_body("invalid_api_key", f"Incorrect API key provided: {API_KEY}")
    provider = provider_for(lambda request: httpx.Response(401, json=body))
    with pytest.raises(AuthenticationError) as info:
        await provider.complete(make_call())
    assert_no_key(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "exc_type",
    [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_transport_error_is_transient_and_never_holds_the_key(
    exc_type: type[httpx.RequestError], stream: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(f"failed with {request.headers['authorization']}", request=request)

    provider = provider_for(handler)
    with pytest.raises(TransientError, match=exc_type.__name__) as info:
        if stream:
            await provider.open_stream(make_call())
        else:
            await provider.complete(make_call())
    assert info.value.status_code is None
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert_no_key(info.value)


@pytest.mark.anyio
async def test_a_connection_dropped_mid_stream_is_transient() -> None:
    async def dropped() -> AsyncIterator[bytes]:
        yield b"".join(sse(delta("a")))
        raise httpx.RemoteProtocolError(f"peer closed, {API_KEY}")

    provider = provider_for(lambda request: httpx.Response(200, content=dropped()))
    stream = await provider.open_stream(make_call())
    with pytest.raises(TransientError, match="RemoteProtocolError") as info:
        async for _ in stream:
            pass
    await stream.aclose()
    assert_no_key(info.value)


# -- cancellation and lifetime ----------------------------------------------------------


@pytest.mark.anyio
async def test_cancelling_a_call_abandons_the_request() -> None:
    abandoned = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        try:
            await anyio.sleep_forever()
        finally:
            abandoned.set()
        raise AssertionError  # pragma: no cover

    provider = provider_for(handler)
    with anyio.move_on_after(5) as scope:
        await provider.complete(make_call())
    assert scope.cancelled_caught
    assert abandoned.is_set()


@pytest.mark.anyio
async def test_the_provider_makes_its_pool_lazily_and_closes_only_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    own = OpenAICompatProvider(timeout=3.0, max_connections=7)
    assert own._transport is None
    own.prepare()  # at start, in a worker thread: made ahead of the calls
    transport = own._transport
    assert isinstance(transport, Http11Transport)
    own.prepare()
    assert own._transport is transport  # one pool for every key
    await own.aclose()
    assert own._transport is None and transport._closed
    await own.aclose()

    lent = httpx.AsyncClient()
    provider = OpenAICompatProvider(client=lent)
    provider.prepare()
    assert provider._transport is None
    await provider.aclose()
    assert not lent.is_closed
    await lent.aclose()


@pytest.mark.anyio
async def test_a_proxy_in_the_environment_is_honoured_through_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    provider = OpenAICompatProvider(timeout=3.0)
    provider.prepare()
    client = provider._client
    assert provider._transport is None and isinstance(client, httpx.AsyncClient)
    assert client.timeout.read == 3.0
    await provider.aclose()
    assert client.is_closed


# -- reasoning models: max_completion_tokens, and no temperature but 1 --------------------


def reasoning_model(sent: list[dict[str, Any]]) -> Handler:
    """Answers as OpenAI does for o4-mini or gpt-5: 400 to max_tokens and to a temperature."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        for param, code in (("max_tokens", "unsupported_parameter"), ("temperature", "")):
            if param in body and (param == "max_tokens" or body[param] != 1):
                error = {
                    "message": f"Unsupported parameter: '{param}' with this model.",
                    "type": "invalid_request_error",
                    "param": param,
                    "code": code or "unsupported_value",
                }
                return httpx.Response(400, json={"error": error})
        streamed = body.get("stream", False)
        if streamed:
            return streaming(sse(delta("ok", "stop"), "[DONE]"))(request)
        return httpx.Response(200, json=completion(content="ok"))

    return handler


def defaulted_call(**params: Any) -> ProviderCall:
    call = make_call(**params)
    return ProviderCall(
        key=call.key,
        model=call.model,
        messages=call.messages,
        params={**call.params, "temperature": 0.7},
        request_id=call.request_id,
        defaults=frozenset({"max_tokens", "temperature"}),
    )


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
async def test_a_reasoning_model_gets_max_completion_tokens_and_no_default_temperature(
    stream: bool,
) -> None:
    sent: list[dict[str, Any]] = []
    provider = provider_for(reasoning_model(sent))
    call = defaulted_call()
    if stream:
        assert [c.text for c in await read_stream(provider, call)] == ["ok"]
    else:
        assert (await provider.complete(call)).content == "ok"
    # Refused twice, then sent right; and right the first time from then on.
    assert len(sent) == 3
    assert sent[-1].get("max_completion_tokens") == 50 and "max_tokens" not in sent[-1]
    assert "temperature" not in sent[-1]
    sent.clear()
    await provider.complete(call)
    assert len(sent) == 1 and "max_tokens" not in sent[0] and "temperature" not in sent[0]


@pytest.mark.anyio
async def test_a_temperature_the_caller_asked_for_is_never_dropped() -> None:
    sent: list[dict[str, Any]] = []
    provider = provider_for(reasoning_model(sent))
    call = make_call(temperature=0.2)  # given by the caller: not in call.defaults
    with pytest.raises(BadRequestError, match="temperature"):
        await provider.complete(call)
    assert [body.get("temperature") for body in sent] == [0.2, 0.2]  # max_tokens fixed once
    assert "max_completion_tokens" in sent[-1]


@pytest.mark.anyio
async def test_the_provider_s_own_completion_reaches_the_chat_response() -> None:
    # For what ChatResponse does not carry: the gateway relays its logprobs and the rest.
    from maxllm_gate import maxllm_gate

    data = {**completion(content="hi"), "system_fingerprint": "fp_1"}
    provider = provider_for(lambda request: httpx.Response(200, json=data))
    async with maxllm_gate(keys=[make_call().key], provider=provider) as client:
        response = await client.chat(MODEL, "hi")
    assert response.raw == data and response.content == "hi"
    assert "fp_1" not in repr(response)
