"""LiteLLMProvider against the fake OpenAI-compatible server, over real HTTP and the real clock.

LiteLLM is imported once for the module (it takes seconds); every test then
runs under asyncio (LiteLLM in the test's loop) and trio (LiteLLM on the
provider's private asyncio thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import attrs
import pytest
import trio

from maxllm_gate.config import KeyConfig
from maxllm_gate.errors import (
    AuthenticationError,
    BadRequestError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    TransientError,
)
from maxllm_gate.providers import _asyncio_thread, litellm_provider
from maxllm_gate.providers.base import ProviderCall
from maxllm_gate.providers.litellm_provider import LiteLLMProvider
from maxllm_gate.responses import Usage
from maxllm_gate.testing.fake_provider import FakeProvider

KEY = "sk-test-litellm-0123456789abcdef"
MODEL = "gpt-4o-mini"
TEXT = "lorem " * 16  # what the fake generates for completion_tokens=16
RoomyLimits = {KEY: {MODEL: (6000.0, 1_000_000.0)}}

# LiteLLM's own stream code trips pydantic's deprecation warnings.
pytestmark = pytest.mark.filterwarnings("ignore:Accessing the 'model_:DeprecationWarning")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)  # the real clock: these tests talk over real sockets


@pytest.fixture(scope="module", autouse=True)
def litellm_loaded() -> None:
    litellm_provider._import_litellm()  # once, so no test pays the seconds of the import


@pytest.fixture
async def provider() -> AsyncIterator[LiteLLMProvider]:
    provider = LiteLLMProvider()
    try:
        yield provider
    finally:
        await provider.aclose()


def make_call(url: str, *, model: str = MODEL, **params: Any) -> ProviderCall:
    key = KeyConfig(
        api_key=KEY,
        provider="openai",
        models={MODEL: {"rpm_limit": 600, "tpm_limit": 100_000}},
        api_base=url,
    )
    messages = [{"role": "user", "content": "Say something."}]
    return ProviderCall(key, model, messages, {"max_tokens": 64, **params}, "req-1")


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll the fake server's counters: it has no event to wait on."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)


def assert_secret_free(error: BaseException) -> None:
    assert KEY not in str(error) and KEY not in repr(error)
    assert all(KEY not in str(arg) for arg in error.args)
    assert error.__cause__ is None and error.__context__ is None


# -- loading -------------------------------------------------------------------------------


def test_importing_the_package_and_making_a_provider_does_not_import_litellm() -> None:
    code = (
        "import sys, maxllm_gate\n"
        "from maxllm_gate.providers.litellm_provider import LiteLLMProvider\n"
        "LiteLLMProvider()\n"
        "assert 'litellm' not in sys.modules, 'litellm was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.anyio
async def test_concurrent_first_calls_share_one_import(monkeypatch: pytest.MonkeyPatch) -> None:
    imports: list[str] = []
    real = litellm_provider._import_litellm()

    class SlowImporter:
        @staticmethod
        def import_module(name: str) -> Any:
            imports.append(name)
            time.sleep(0.1)
            return sys.modules[name]

    monkeypatch.setattr(litellm_provider, "_litellm", None)
    monkeypatch.setattr(litellm_provider, "importlib", SlowImporter)
    monkeypatch.setattr(litellm_provider, "_warm_up", lambda module: None)
    loaded: list[Any] = []

    async def load() -> None:
        loaded.append(await litellm_provider.load_litellm())

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(load)
    assert imports.count("litellm") == 1
    assert loaded == [real] * 5


def test_arguments_force_no_retries_and_prefix_the_model_once() -> None:
    plain = litellm_provider._arguments(make_call("http://127.0.0.1:9/v1", num_retries=3))
    prefixed = litellm_provider._arguments(make_call("http://127.0.0.1:9/v1", model="openai/x"))
    assert plain["model"] == f"openai/{MODEL}" and prefixed["model"] == "openai/x"
    assert plain["num_retries"] == 0 and plain["max_retries"] == 0
    assert plain["api_key"] == KEY and plain["api_base"] == "http://127.0.0.1:9/v1"
    assert plain["max_tokens"] == 64
    assert plain["extra_headers"] == {"x-client-request-id": "req-1"}
    own = litellm_provider._arguments(
        make_call("http://127.0.0.1:9/v1", extra_headers={"x-team": "a"})
    )
    assert own["extra_headers"] == {"x-team": "a", "x-client-request-id": "req-1"}
    assert "api_version" not in plain
    azure = make_call("https://res.openai.azure.com")
    azure = attrs.evolve(azure, key=attrs.evolve(azure.key, api_version="2024-10-21"))
    assert litellm_provider._arguments(azure)["api_version"] == "2024-10-21"


def test_tool_calls_come_back_as_plain_dicts() -> None:
    litellm = litellm_provider._import_litellm()
    tool_call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    message = {"role": "assistant", "content": None, "tool_calls": [tool_call]}
    raw = litellm.ModelResponse(
        model=MODEL,
        choices=[{"index": 0, "finish_reason": "tool_calls", "message": message}],
        usage={"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    )
    response = litellm_provider._response_of(make_call("http://127.0.0.1:9/v1"), raw)
    assert response.tool_calls == (tool_call,)
    assert type(response.tool_calls[0]) is dict
    assert response.content is None and response.finish_reason == "tool_calls"
    assert response.usage == Usage(5, 7)


# -- calls ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_complete_returns_content_usage_and_rate_limit_headers(
    provider: LiteLLMProvider,
) -> None:
    async with FakeProvider(limits=RoomyLimits).running() as fake:
        response = await provider.complete(make_call(fake.url))
        stats = fake.stats_for(KEY)
    assert response.content == TEXT
    assert response.finish_reason == "stop"
    assert response.model == MODEL
    assert response.usage == Usage(stats["prompt_tokens"], 16)
    assert response.headers["x-ratelimit-limit-requests"] == "6000"
    assert "x-ratelimit-remaining-tokens" in response.headers
    assert "x-ratelimit-reset-tokens" in response.headers  # LiteLLM only sends it prefixed
    assert not any(name.startswith("llm_provider-") for name in response.headers)
    assert stats["calls"] == 1
    assert fake.request_sends == {"req-1": 1}  # retries would send the same id
    assert response.raw.choices[0].message.content == TEXT  # LiteLLM's own, for the rest


@pytest.mark.anyio
async def test_complete_says_when_the_request_left_after_litellms_own_work(
    provider: LiteLLMProvider,
) -> None:
    # LiteLLM works for a while before it sends: its answer says when it did, on our
    # clock (under trio, across the thread it runs on), before the provider's latency.
    async with FakeProvider(limits=RoomyLimits, latency=0.3).running() as fake:
        started = anyio.current_time()
        response = await provider.complete(make_call(fake.url))
        ended = anyio.current_time()
    assert response.sent_at is not None
    assert started <= response.sent_at <= ended - 0.3


@pytest.mark.anyio
async def test_on_sent_tells_the_send_time_on_the_callers_thread(
    provider: LiteLLMProvider,
) -> None:
    # Under trio LiteLLM runs on a thread of its own: the reports come back to ours,
    # with times on our clock. If LiteLLM is slow to send, a report at
    # SEND_REPORT_MAX ("not sooner") comes first; the send's own time comes last.
    caller = threading.get_ident()
    reports: list[list[tuple[int, float]]] = [[], [], []]

    def reporter(n: int) -> Callable[[float], None]:
        return lambda at: reports[n].append((threading.get_ident(), at))

    async with FakeProvider(limits=RoomyLimits, latency=0.3).running() as fake:
        call = make_call(fake.url)
        began = anyio.current_time()
        response = await provider.complete(attrs.evolve(call, on_sent=reporter(0)))
        answered = anyio.current_time()
        await anyio.wait_all_tasks_blocked()
        stream = await provider.open_stream(attrs.evolve(call, on_sent=reporter(1)))
        await stream.aclose()
        await anyio.wait_all_tasks_blocked()
        # LiteLLM's embedding drops a logger_fn: the report comes another way.
        embedding = attrs.evolve(
            call, model="text-embedding-3-small", messages=(), input="hi", on_sent=reporter(2)
        )
        embedded = await provider.embed(embedding)
        await anyio.wait_all_tasks_blocked()
    for told in reports:
        assert 1 <= len(told) <= 2
        assert {thread for thread, _ in told} == {caller}
        assert [at for _, at in told] == sorted(at for _, at in told)
    assert reports[0][-1][1] == pytest.approx(response.sent_at)
    assert reports[2][-1][1] == pytest.approx(embedded.sent_at)
    assert began <= reports[0][-1][1] <= answered - 0.3


def test_on_sent_reaches_a_caller_running_plain_asyncio() -> None:
    # asyncio.run, not anyio.run: a loop callback there cannot ask anyio for the time
    # (sniffio finds no task), so the report must carry it.
    reports: list[float] = []

    async def main() -> tuple[float, float]:
        provider = LiteLLMProvider()
        try:
            async with FakeProvider(limits=RoomyLimits, latency=0.2).running() as fake:
                call = attrs.evolve(make_call(fake.url), on_sent=reports.append)
                began = anyio.current_time()
                await provider.complete(call)
                return began, anyio.current_time()
        finally:
            await provider.aclose()

    began, answered = asyncio.run(main())
    assert reports and began <= reports[-1] <= answered - 0.2


@pytest.mark.anyio
async def test_stream_yields_the_text_then_the_usage(provider: LiteLLMProvider) -> None:
    async with FakeProvider(limits=RoomyLimits).running() as fake:
        stream = await provider.open_stream(make_call(fake.url))
        try:
            chunks = [chunk async for chunk in stream]
        finally:
            await stream.aclose()
        stats = fake.stats_for(KEY)
    assert "".join(chunk.text for chunk in chunks) == TEXT
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].usage == Usage(stats["prompt_tokens"], 16)
    assert stream.headers["x-ratelimit-limit-requests"] == "6000"
    assert stats["calls"] == 1


@pytest.mark.anyio
async def test_a_reasoning_model_is_sent_no_default_temperature(
    provider: LiteLLMProvider,
) -> None:
    # LiteLLM refuses temperature=0.7 for o4-mini before sending anything; the one the
    # client filled in from its config is left out (and max_tokens LiteLLM renames).
    def call(temperature: float, defaults: frozenset[str]) -> ProviderCall:
        made = make_call(fake.url, model="o4-mini", temperature=temperature)
        return attrs.evolve(made, defaults=defaults)

    async with FakeProvider(default_limits=(6000.0, 1_000_000.0)).running() as fake:
        for _ in range(2):  # the second time, without the refusal first
            response = await provider.complete(call(0.7, frozenset({"temperature"})))
            assert response.content == TEXT
        with pytest.raises(BadRequestError, match="via LiteLLM"):  # asked for: not dropped
            await provider.complete(call(0.2, frozenset()))
        assert fake.stats_for(KEY)["calls"] == 2


# -- errors --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_429_is_a_rate_limit_error_after_exactly_one_http_call(
    provider: LiteLLMProvider,
) -> None:
    # 60 RPM over a 1 s burst window: room for one call, the next is refused.
    async with FakeProvider(limits={KEY: {MODEL: (60.0, 1_000_000.0)}}).running() as fake:
        await provider.complete(make_call(fake.url))
        started = time.monotonic()
        with pytest.raises(RateLimitError) as caught:
            await provider.complete(make_call(fake.url))
        elapsed = time.monotonic() - started
        stats = fake.stats_for(KEY)
    error = caught.value
    assert error.status_code == 429
    assert error.retry_after is not None and 0 < error.retry_after <= 1.0
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert stats["calls"] == 2 and stats["rate_limited"] == 1  # LiteLLM did not retry
    assert elapsed < 0.5
    assert_secret_free(error)


def _echo(status: int, code: str | None = None) -> dict[str, Any]:
    # A provider that quotes the key back, as some do.
    message = f"Something about {KEY} went wrong"
    return {"error": {"message": message, "type": "error", "code": code, "param": None}}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, None, AuthenticationError),
        (403, None, AuthenticationError),
        (400, _echo(400), BadRequestError),
        (404, None, BadRequestError),
        (429, _echo(429, "insufficient_quota"), QuotaExceededError),
        (500, _echo(500), TransientError),
        (503, None, TransientError),
    ],
)
async def test_error_answers_map_to_their_classes_without_retries(
    provider: LiteLLMProvider,
    status: int,
    body: dict[str, Any] | None,
    expected: type[ProviderError],
) -> None:
    async with FakeProvider(limits=RoomyLimits).running() as fake:
        call = make_call(fake.url)
        fake.inject(status, body=body)
        with pytest.raises(ProviderError) as caught:
            await provider.complete(call)
        assert fake.stats_for(KEY)["calls"] == 1
    error = caught.value
    assert type(error) is expected
    assert error.status_code == status
    assert error.key_id == call.key.key_id
    assert "x-ratelimit-limit-requests" in error.headers
    assert_secret_free(error)


@pytest.mark.anyio
async def test_a_revoked_key_is_an_authentication_error(provider: LiteLLMProvider) -> None:
    async with FakeProvider(limits=RoomyLimits).running() as fake:
        fake.revoke(KEY)
        with pytest.raises(AuthenticationError) as caught:
            await provider.complete(make_call(fake.url))
    assert caught.value.status_code == 401
    assert_secret_free(caught.value)


@pytest.mark.anyio
async def test_opening_a_refused_stream_raises_the_classified_error(
    provider: LiteLLMProvider,
) -> None:
    async with FakeProvider(limits=RoomyLimits).running() as fake:
        fake.inject(429, headers={"retry-after": "7"})
        with pytest.raises(RateLimitError) as caught:
            await provider.open_stream(make_call(fake.url))
        assert fake.stats_for(KEY)["calls"] == 1
    assert caught.value.retry_after == 7.0


@pytest.mark.anyio
async def test_an_unreachable_provider_is_a_transient_error_with_no_status(
    provider: LiteLLMProvider,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransientError) as caught:
        await provider.complete(make_call(f"http://127.0.0.1:{port}/v1"))
    assert caught.value.status_code is None
    assert_secret_free(caught.value)


# -- cancellation --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "open_stream"])
async def test_cancelling_a_call_returns_promptly_and_drops_the_connection(
    provider: LiteLLMProvider, streamed: bool
) -> None:
    async with FakeProvider(limits=RoomyLimits, latency=5.0).running() as fake:
        call = make_call(fake.url)
        started = anyio.current_time()
        # A second for the call to reach the server, even on a loaded machine.
        with anyio.move_on_after(1.0) as scope:
            if streamed:
                await provider.open_stream(call)
            else:
                await provider.complete(call)
        assert scope.cancelled_caught
        assert anyio.current_time() - started < 2.0
        assert fake.stats_for(KEY)["calls"] == 1
        # Still 4 s from answering: only a hang-up ends the server's side so soon.
        await wait_until(lambda: fake.stats_for(KEY)["in_flight"] == 0)


@pytest.mark.anyio
async def test_closing_a_stream_early_drops_the_connection(provider: LiteLLMProvider) -> None:
    # 2000 tokens at 5 ms each: the whole stream would take 10 s.
    fake = FakeProvider(limits=RoomyLimits, completion_tokens=2000, seconds_per_token=0.005)
    async with fake.running():
        stream = await provider.open_stream(make_call(fake.url, max_tokens=4000))
        received = 0
        try:
            with anyio.move_on_after(0.3):  # cancelled in the middle of reading
                async for chunk in stream:
                    received += len(chunk.text)
                    await anyio.sleep(0.05)
        finally:
            await stream.aclose()
        await wait_until(lambda: fake.stats_for(KEY)["in_flight"] == 0)
        sent = fake.stats_for(KEY)["completion_tokens"]
    assert received > 0
    assert 0 < sent < 2000


@pytest.mark.anyio
async def test_aclose_stops_the_private_loop_thread(anyio_backend: str) -> None:
    provider = LiteLLMProvider()
    async with FakeProvider(limits=RoomyLimits).running() as fake:
        await provider.complete(make_call(fake.url))
    assert provider._thread.started == (anyio_backend == "trio")
    await provider.aclose()
    assert not provider._thread.started
    assert not any(t.name == "maxllm_gate-litellm" for t in threading.enumerate())


# -- the asyncio thread, on its own --------------------------------------------------------


def test_bridge_returns_results_and_raises_errors() -> None:
    async def main() -> None:
        thread = _asyncio_thread.AsyncioThread()

        async def double(x: int) -> int:
            await asyncio.sleep(0)
            assert asyncio.get_running_loop() is not None
            return 2 * x

        async def fail() -> None:
            raise KeyError("boom")

        try:
            assert await thread.run(lambda: double(21)) == 42
            with pytest.raises(KeyError):
                await thread.run(fail)
        finally:
            await thread.aclose()

    trio.run(main)


def test_bridge_cancellation_cancels_the_asyncio_task() -> None:
    seen: list[str] = []

    async def sleeper() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        thread = _asyncio_thread.AsyncioThread()
        try:
            started = trio.current_time()
            with trio.move_on_after(0.1):
                await thread.run(sleeper)
            assert trio.current_time() - started < 0.5
            assert seen == ["cancelled"]  # ended before run() re-raised the cancellation
        finally:
            await thread.aclose()

    trio.run(main)


def test_bridge_discards_a_result_that_comes_after_the_cancellation() -> None:
    closed: list[str] = []

    async def stubborn() -> str:
        with contextlib.suppress(asyncio.CancelledError):  # like a stream opened regardless
            await asyncio.sleep(10)
        return "stream"

    async def close(resource: str) -> None:
        closed.append(resource)

    async def main() -> None:
        thread = _asyncio_thread.AsyncioThread()
        try:
            with trio.move_on_after(0.05):
                await thread.run(stubborn, discard=close)
            assert closed == ["stream"]
        finally:
            await thread.aclose()

    trio.run(main)


def test_bridged_iteration_applies_backpressure_and_closes_the_source() -> None:
    produced: list[int] = []
    closed: list[bool] = []

    class Source:
        def __init__(self) -> None:
            self.n = 0

        def __aiter__(self) -> Source:
            return self

        async def __anext__(self) -> int:
            self.n += 1
            produced.append(self.n)
            return self.n

        async def aclose(self) -> None:
            closed.append(True)

    async def main() -> None:
        thread = _asyncio_thread.AsyncioThread()
        try:
            items = thread.iterate(Source(), buffer=4)
            assert await items.__anext__() == 1
            await trio.sleep(0.1)
            assert len(produced) <= 2 * 4 + 1  # the documented bound on reading ahead
            await items.aclose()
            await items.aclose()
            assert closed == [True]
            with pytest.raises(StopAsyncIteration):
                await items.__anext__()
        finally:
            await thread.aclose()

    trio.run(main)


def test_bridged_iteration_relays_the_end_and_errors() -> None:
    async def finite() -> AsyncIterator[int]:
        yield 1
        yield 2

    async def failing() -> AsyncIterator[int]:
        yield 1
        raise ValueError("broken stream")

    async def main() -> None:
        thread = _asyncio_thread.AsyncioThread()
        try:
            assert [item async for item in thread.iterate(finite())] == [1, 2]
            items = thread.iterate(failing())
            assert await items.__anext__() == 1
            with pytest.raises(ValueError, match="broken stream"):
                await items.__anext__()
            with contextlib.suppress(Exception):
                await items.aclose()
        finally:
            await thread.aclose()

    trio.run(main)


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
async def test_a_context_length_error_keeps_the_providers_message_code_and_param(
    provider: LiteLLMProvider, stream: bool
) -> None:
    message = f"This model's maximum context length is 8192 tokens ({KEY})."
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    echoed = {"error": {**body["error"], "param": f"messages ({KEY})", "code": f"c-{KEY}"}}
    async with FakeProvider(limits=RoomyLimits).running() as fake:
        fake.inject(400, body=body)
        call = make_call(fake.url)
        with pytest.raises(BadRequestError) as caught:
            await (provider.open_stream(call) if stream else provider.complete(call))
    error = caught.value
    assert (error.status_code, error.code, error.param) == (
        400,
        "context_length_exceeded",
        "messages",
    )
    assert "maximum context length is 8192 tokens" in str(error)
    assert_secret_free(error)
    async with FakeProvider(limits=RoomyLimits).running() as fake:
        fake.inject(400, body=echoed)  # the key in every field: masked in each
        with pytest.raises(BadRequestError) as caught:
            await provider.complete(make_call(fake.url))
    assert KEY not in f"{caught.value.code} {caught.value.param} {caught.value}"


def test_litellms_variables_are_set_only_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module
    fake = types.SimpleNamespace(acompletion=None, input_callback=[])
    monkeypatch.setattr(litellm_provider, "_litellm", None)
    monkeypatch.setattr(
        litellm_provider.importlib,
        "import_module",
        lambda name: fake if name == "litellm" else real_import(name),
    )
    monkeypatch.setenv("LITELLM_OFFLINE_MODE", "false")  # the user's choice
    monkeypatch.delenv("LITELLM_LOCAL_MODEL_COST_MAP", raising=False)
    assert litellm_provider._import_litellm() is fake
    assert os.environ["LITELLM_OFFLINE_MODE"] == "false"
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


@pytest.mark.anyio
async def test_a_429_with_googles_retry_delay_waits_that_long(provider: LiteLLMProvider) -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "38s"}
    body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [retry]}}
    async with FakeProvider(limits=RoomyLimits).running() as fake:
        fake.inject(429, body=body)
        with pytest.raises(RateLimitError) as caught:
            await provider.complete(make_call(fake.url))
    assert caught.value.retry_after == 38.0
