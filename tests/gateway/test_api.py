"""The gateway as OpenAI's own Python client sees it: the wire format, streams and errors."""

from __future__ import annotations

import concurrent.futures
import json
import time
from typing import Any

import anyio
import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from prometheus_client.parser import text_string_to_metric_families

from maxllm_gate.testing.fake_provider import fake_provider_process
from tests.gateway.conftest import (
    ALL_KEYS,
    FAST,
    SLOW,
    STRICT,
    STRICT_KEY,
    TOKEN,
    GatewayProcess,
    base_env,
    fake_rate_limited,
    keys_config,
    run_gateway,
)

HELLO = [{"role": "user", "content": "Say hello"}]
COMPLETION_FIELDS = {"id", "object", "created", "model", "choices", "usage"}


def sync_client(gateway: GatewayProcess, token: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0, timeout=30)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def metric_samples(gateway: GatewayProcess) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(gateway.url + "/metrics", headers=auth()).text
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    return sum(
        value
        for sample, have, value in metric_samples(gateway)
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


# -- the wire format --------------------------------------------------------------------------


def test_a_completion_is_openai_s_own_format(gateway: GatewayProcess) -> None:
    raw = sync_client(gateway).chat.completions.with_raw_response.create(
        model=FAST, messages=HELLO, max_tokens=20
    )
    data = raw.http_response.json()
    assert set(data) == COMPLETION_FIELDS
    assert data["object"] == "chat.completion"
    completion = ChatCompletion.model_validate(data)  # the client's own parsing
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "lorem " * 16
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 16
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 16
    assert completion.id.startswith("chatcmpl-")
    assert abs(completion.created - time.time()) < 60
    assert raw.headers["x-gate-key-id"] in {"k1", "k2"}


def test_a_stream_relays_chunks_and_ends_with_usage_when_asked(gateway: GatewayProcess) -> None:
    stream = sync_client(gateway).chat.completions.create(
        model=FAST,
        messages=HELLO,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text_chunks, last = chunks[:-1], chunks[-1]
    assert "".join(c.choices[0].delta.content or "" for c in text_chunks) == "lorem " * 16
    assert text_chunks[0].choices[0].delta.role == "assistant"
    assert text_chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in text_chunks)
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 16


def test_a_stream_without_include_usage_has_no_usage(gateway: GatewayProcess) -> None:
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        headers=auth(),
        json={"model": FAST, "messages": HELLO, "max_tokens": 8, "stream": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all('"usage"' not in line for line in lines)
    assert len(lines) == 3  # two chunks of four tokens, then [DONE]


@pytest.mark.anyio
async def test_the_async_client_plain_and_streamed(gateway: GatewayProcess) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=TOKEN, max_retries=0)
    async with client:
        completion = await client.chat.completions.create(model=FAST, messages=HELLO)
        assert completion.choices[0].message.content == "lorem " * 16
        stream = await client.chat.completions.create(model=FAST, messages=HELLO, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "lorem " * 16


@pytest.mark.anyio
async def test_many_concurrent_requests_all_succeed(gateway: GatewayProcess) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=TOKEN, max_retries=0)
    answers: list[str] = []

    async def one(i: int) -> None:
        completion = await client.chat.completions.create(
            model=FAST, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=4
        )
        answers.append(completion.choices[0].message.content or "")

    async with client, anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(one, i)
    assert answers == ["lorem " * 4] * 60


def test_models_lists_what_the_keys_serve(gateway: GatewayProcess) -> None:
    models = sync_client(gateway).models.list()
    assert sorted(m.id for m in models.data) == sorted([FAST, SLOW, STRICT])


def test_priority_comes_from_the_header_or_the_body(gateway: GatewayProcess) -> None:
    client = sync_client(gateway)
    high = client.chat.completions.create(
        model=FAST, messages=HELLO, extra_headers={"x-priority": "high"}
    )
    low = client.chat.completions.create(model=FAST, messages=HELLO, extra_body={"priority": "low"})
    assert high.choices[0].message.content and low.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="priority"):
        client.chat.completions.create(
            model=FAST, messages=HELLO, extra_headers={"x-priority": "x"}
        )


# -- errors -------------------------------------------------------------------------------------


def test_a_client_without_a_valid_token_gets_401(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sync_client(gateway, token="wrong").chat.completions.create(model=FAST, messages=HELLO)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    for path in ("/status", "/capacity", "/latency", "/scores", "/metrics", "/v1/models"):
        assert httpx.get(gateway.url + path).status_code == 401, path
    assert httpx.get(gateway.url + "/status", headers=auth("other-token")).status_code == 200


def test_bad_input_gets_400_in_openai_s_error_format(gateway: GatewayProcess) -> None:
    client = sync_client(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=FAST, messages=[{"role": "user", "content": " "}])
    assert "content" in caught.value.message
    response = httpx.post(
        gateway.url + "/v1/chat/completions", headers=auth(), content=b"{not json"
    )
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model=FAST, messages=HELLO, n=2)


def test_an_unknown_model_gets_404(gateway: GatewayProcess) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sync_client(gateway).chat.completions.create(model="no-such-model", messages=HELLO)
    assert caught.value.code == "model_not_found"


def test_a_body_over_the_limit_gets_413(gateway: GatewayProcess) -> None:
    big = {"model": FAST, "messages": [{"role": "user", "content": "x" * 5_000_000}]}
    response = httpx.post(gateway.url + "/v1/chat/completions", headers=auth(), json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_request_deferred_past_its_timeout_gets_504(gateway: GatewayProcess) -> None:
    client = sync_client(gateway)
    client.chat.completions.create(model=SLOW, messages=HELLO, max_tokens=4)  # takes the burst
    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=SLOW, messages=HELLO, max_tokens=4, extra_body={"timeout": 0.3}
        )
    assert caught.value.status_code == 504
    # The key fits it in a second, after its 0.3 s timeout: the answer comes at once.
    assert time.monotonic() - start < 0.25
    assert "cannot start before its timeout" in str(caught.value)
    status = httpx.get(gateway.url + "/status", headers=auth()).json()
    assert status["queued"] == 0
    with pytest.raises(openai.APIStatusError) as caught:  # a stream waits the same way
        client.chat.completions.create(
            model=SLOW, messages=HELLO, max_tokens=4, stream=True, extra_body={"timeout": 0.1}
        )
    assert caught.value.status_code == 504


def test_a_full_queue_gets_503_with_retry_after(fake_url: str, tmp_path: Any) -> None:
    env = base_env(fake_url, MAX_QUEUE_SIZE="1")
    with run_gateway(tmp_path, env) as gateway:
        client = sync_client(gateway)
        client.chat.completions.create(model=SLOW, messages=HELLO, max_tokens=4)  # the burst
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(
                client.chat.completions.create, model=SLOW, messages=HELLO, max_tokens=4
            )
            _wait_for(lambda: _status(gateway)["queued"] == 1)
            response = httpx.post(
                gateway.url + "/v1/chat/completions",
                headers=auth(),
                json={"model": SLOW, "messages": HELLO, "max_tokens": 4},
            )
            assert response.status_code == 503
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"]["code"] == "queue_full"
            assert waiting.result(timeout=10).choices[0].message.content  # deferred, not refused
        assert metric(gateway, "maxllm_gate_deferred_requests_total", model=SLOW) >= 1


def test_a_caller_who_hangs_up_while_deferred_leaves_the_queue(gateway: GatewayProcess) -> None:
    client = sync_client(gateway)
    client.chat.completions.create(model=SLOW, messages=HELLO, max_tokens=4)  # the burst
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.url + "/v1/chat/completions",
            headers=auth(),
            json={"model": SLOW, "messages": HELLO, "max_tokens": 4},
            timeout=0.3,
        )
    _wait_for(lambda: _status(gateway)["outstanding"] == 0)


def test_the_provider_s_429s_never_reach_the_client(tmp_path: Any) -> None:
    # The gateway believes the key allows 1200 RPM; the provider enforces 120 (2 a second).
    # Its answers take 0.5 s, so the gateway sends the whole burst before any header
    # could tell it the real limit.
    limits = json.dumps({STRICT_KEY: {STRICT: [120, 1_000_000]}})
    with fake_provider_process("--limits", limits, "--latency", "0.5") as url:
        env = {
            "API_KEYS_CONFIG": keys_config(url, {STRICT_KEY: {STRICT: (1200, 1_000_000)}}),
            "GATEWAY_API_KEYS": TOKEN,
        }
        with run_gateway(tmp_path, env) as gateway:
            client = sync_client(gateway)
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                futures = [
                    pool.submit(
                        client.chat.completions.create, model=STRICT, messages=HELLO, max_tokens=4
                    )
                    for _ in range(6)
                ]
                answers = [f.result(timeout=30) for f in futures]
            assert all(a.choices[0].message.content == "lorem " * 4 for a in answers)
            seen = fake_rate_limited(url, STRICT_KEY)
            assert seen > 0  # the provider did refuse calls ...
            hidden = metric(gateway, "maxllm_gate_rate_limited_total", key_id="k1")
            assert hidden == seen  # ... and the gateway saw each one, and hid it


# -- operations routes and metrics -----------------------------------------------------------


def test_health_and_ready_are_open(gateway: GatewayProcess) -> None:
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/ready")
    assert ready.status_code == 200
    assert ready.json()["usable_keys"] == 4
    for path in ("/health", "/ready"):  # as load balancers probe
        assert httpx.head(gateway.url + path).status_code == 200, path


def test_the_operations_routes_return_the_sdk_s_data(gateway: GatewayProcess) -> None:
    status = _status(gateway)
    assert set(status["keys"]) == {"k1", "k2", "k3", "k4"}
    assert status["running"] and status["strategy"] == "least_utilized"
    capacity = httpx.get(gateway.url + "/capacity", headers=auth()).json()
    assert capacity["keys"]["k3"]["models"][SLOW]["rpm_limit"] == 60
    latency = httpx.get(gateway.url + "/latency", headers=auth()).json()
    assert set(latency) == {"k1", "k2", "k3", "k4"}
    scores = httpx.get(gateway.url + "/scores", params={"model": FAST}, headers=auth()).json()
    assert set(scores) == {"k1", "k2"}


def test_metrics_count_requests_tokens_attempts_errors_and_capacity(
    gateway: GatewayProcess,
) -> None:
    client = sync_client(gateway)
    before = metric(gateway, "maxllm_gate_requests_total", model=FAST, status="200")
    tokens_before = metric(gateway, "maxllm_gate_tokens_total", model=FAST, kind="completion")
    for _ in range(3):
        client.chat.completions.create(model=FAST, messages=HELLO, max_tokens=8)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="made-up-model", messages=HELLO)
    assert metric(gateway, "maxllm_gate_requests_total", model=FAST, status="200") == before + 3
    completion = metric(gateway, "maxllm_gate_tokens_total", model=FAST, kind="completion")
    assert completion == tokens_before + 24
    assert metric(gateway, "maxllm_gate_attempts_total", model=FAST) >= before + 3
    # A model a caller made up is counted, but never becomes a label of its own.
    assert metric(gateway, "maxllm_gate_errors_total", model="other", error="model_not_found") >= 1
    names = {name for name, _, _ in metric_samples(gateway)}
    assert {
        "maxllm_gate_queue_depth",
        "maxllm_gate_queue_time_seconds_bucket",
        "maxllm_gate_deferred_requests_total",
        "maxllm_gate_rate_limited_total",
        "maxllm_gate_remaining_requests",
        "maxllm_gate_remaining_tokens",
        "maxllm_gate_charge_factor",
        "maxllm_gate_tokens_scale",
    } <= names | {"maxllm_gate_deferred_requests_total"}
    depth = {labels["priority"] for n, labels, _ in metric_samples(gateway) if n.endswith("depth")}
    assert depth == {"high", "medium", "low"}
    remaining = metric(gateway, "maxllm_gate_remaining_requests", key_id="k3", model=SLOW)
    assert 0 <= remaining <= 1
    assert metric(gateway, "maxllm_gate_charge_factor", key_id="k3", model=SLOW) > 0
    assert all("model" not in labels or labels["model"] != "made-up-model"
               for _, labels, _ in metric_samples(gateway))  # fmt: skip


def test_no_provider_key_leaves_the_gateway(gateway: GatewayProcess) -> None:
    client = sync_client(gateway)
    client.chat.completions.create(model=FAST, messages=HELLO)
    seen = [
        httpx.get(gateway.url + path, headers=auth()).text
        for path in ("/status", "/capacity", "/latency", "/scores", "/metrics", "/dashboard/data")
    ]
    seen.append(gateway.log)
    for text in seen:
        for api_key in ALL_KEYS:
            assert api_key not in text
        assert TOKEN not in text


def _status(gateway: GatewayProcess) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(gateway.url + "/status", headers=auth()).json()
    return status


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    """Wait for another process to reach a state, with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the gateway did not reach the expected state in time")
        time.sleep(0.02)
