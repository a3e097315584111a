"""The gateway under hostile upstreams and sloppy clients, over real HTTP, under both workers."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import itertools
import json
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from maxllm_gate.gateway import wire
from maxllm_gate.gateway.metrics import ERROR_LABELS
from tests.gateway.conftest import FAST, TOKEN, GatewayProcess, keys_config, run_gateway
from tests.gateway.upstream import Answer, ScriptedUpstream, completion

MODEL = "upstream-model"
SECRET = "sk-hostile-0123456789abcdefSECRET"
HELLO = [{"role": "user", "content": "Say hello"}]
HELLO_JSON = json.dumps(HELLO)
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _env(url: str, api_key: str = SECRET) -> dict[str, str]:
    return {
        "API_KEYS_CONFIG": keys_config(url, {api_key: {MODEL: (6000, 6_000_000)}}),
        "GATEWAY_API_KEYS": TOKEN,
        "LOG_LEVEL": "DEBUG",
    }


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for the gateway process to reach a state, with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the gateway did not reach the expected state in time")
        time.sleep(0.05)


# -- secrets and label cardinality ---------------------------------------------------------------


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_a_key_echoed_in_every_field_of_an_upstream_error_never_leaves(
    worker_class: str, tmp_path: Path
) -> None:
    serial = itertools.count()

    def hostile(body: dict[str, Any], api_key: str) -> Answer:
        n = next(serial)
        error = {
            "message": f"key {api_key} is not allowed here",
            "type": f"invalid_request_error {api_key}",
            "param": f"messages[{n}].{api_key}",
            "code": f"code_{n}_{api_key}",  # a different code each time, as a hostile one
            "detail": {"key": api_key},
        }
        return 400, {"error": error}, {"x-echo-key": api_key}

    with (
        ScriptedUpstream(hostile).running() as upstream,
        run_gateway(tmp_path, _env(upstream.url), "--worker-class", worker_class) as gateway,
    ):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TOKEN, max_retries=0)
        seen: list[str] = []
        for _ in range(20):
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(model=MODEL, messages=HELLO)
            seen.append(caught.value.response.text)
            assert caught.value.code and caught.value.code.startswith("code_")
        streamed = httpx.post(
            gateway.url + "/v1/chat/completions",
            headers=AUTH,
            json={"model": MODEL, "messages": HELLO, "stream": True},
        )
        assert streamed.status_code == 400
        seen.append(streamed.text)
        metrics = httpx.get(gateway.url + "/metrics", headers=AUTH).text
        seen.append(metrics)
        for path in ("/dashboard/data", "/status", "/capacity"):
            seen.append(httpx.get(gateway.url + path, headers=AUTH).text)
        gateway.stop()
        seen.append(gateway.log)
    assert len(upstream.bodies) == 21
    for text in seen:
        assert SECRET not in text
    assert "<redacted>" in seen[0]
    # Twenty codes made up by the provider: one label value, not twenty.
    labels = {
        labels["error"]
        for name, labels, _ in _samples(metrics)
        if name == "maxllm_gate_errors_total"
    }
    assert labels == {"other"}
    assert labels <= ERROR_LABELS | {"other"}


# -- client disconnects ---------------------------------------------------------------------------


def _hang_up_mid_body(url: str) -> None:
    """Send the headers and part of the body of a chat request, then close the socket."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
            b"authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
            b'{"model": "' + MODEL.encode() + b'", "messages": ['
        )


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_callers_who_hang_up_mid_body_count_as_499_without_an_error(
    worker_class: str, tmp_path: Path
) -> None:
    with (
        ScriptedUpstream(lambda body, key: completion(body)).running() as upstream,
        run_gateway(tmp_path, _env(upstream.url), "--worker-class", worker_class) as gateway,
    ):
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: _hang_up_mid_body(gateway.url), range(300)))

        def closed() -> float:
            text = httpx.get(gateway.url + "/metrics", headers=AUTH).text
            return sum(
                value
                for name, labels, value in _samples(text)
                if name == "maxllm_gate_requests_total" and labels["status"] == "499"
            )

        _wait_for(lambda: closed() == 300)
        metrics = httpx.get(gateway.url + "/metrics", headers=AUTH).text
        # The gateway still answers, and the hang-ups cost nothing upstream.
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TOKEN, max_retries=0)
        assert client.chat.completions.create(model=MODEL, messages=HELLO).choices
        gateway.stop()
    assert 'status="500"' not in metrics
    errors = {
        labels["error"]: value
        for name, labels, value in _samples(metrics)
        if name == "maxllm_gate_errors_total"
    }
    assert errors == {"client_closed": 300}
    assert len(upstream.bodies) == 1
    assert "error" not in gateway.log.lower().replace("client_closed", ""), gateway.log[-2000:]
    assert gateway.log.count("client closed") == 300


# -- hostile JSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [101, 1_000, 100_000])
def test_deeply_nested_json_gets_a_400_naming_the_limit(
    either_gateway: GatewayProcess, depth: int
) -> None:
    nested = "[" * depth + "]" * depth
    raw = f'{{"model": "{FAST}", "messages": {HELLO_JSON}, "metadata": {nested}}}'
    response = httpx.post(
        either_gateway.url + "/v1/chat/completions", headers=AUTH, content=raw.encode()
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "more than 100 levels deep" in error["message"]
    assert "RecursionError" not in either_gateway.log
    assert "Traceback" not in either_gateway.log


def test_json_nested_within_the_limit_passes(either_gateway: GatewayProcess) -> None:
    nested = "[" * 90 + "1" + "]" * 90  # a string of brackets counts for nothing
    raw = f'{{"model": "{FAST}", "messages": {HELLO_JSON}, "user": "{"[" * 500}"}}'
    assert wire.parse_chat(raw.encode()).extra["user"] == "[" * 500
    raw = f'{{"model": "{FAST}", "messages": {HELLO_JSON}, "metadata": {nested}}}'
    assert wire.parse_chat(raw.encode()).extra["metadata"]
    answer = httpx.post(
        either_gateway.url + "/v1/chat/completions",
        headers=AUTH,
        json={"model": FAST, "messages": HELLO, "user": "[" * 500, "max_tokens": 4},
    )
    assert answer.status_code == 200, answer.text


# -- pass-through -------------------------------------------------------------------------------


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_the_provider_gets_only_the_parameters_the_client_sent(
    worker_class: str, tmp_path: Path
) -> None:
    with (
        ScriptedUpstream(lambda body, key: completion(body)).running() as upstream,
        run_gateway(tmp_path, _env(upstream.url), "--worker-class", worker_class) as gateway,
    ):
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TOKEN, max_retries=0)
        assert client.chat.completions.create(model=MODEL, messages=HELLO).choices
        stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        client.chat.completions.create(
            model=MODEL, messages=HELLO, temperature=0, max_tokens=5, top_p=0.5
        )
    plain, streamed, given = upstream.bodies
    assert plain == {"model": MODEL, "messages": HELLO}
    assert streamed == {
        "model": MODEL,
        "messages": HELLO,
        "stream": True,
        "stream_options": {"include_usage": True},  # how the gateway counts a stream
    }
    assert given == {
        "model": MODEL,
        "messages": HELLO,
        "temperature": 0,
        "max_tokens": 5,
        "top_p": 0.5,
    }


# -- bounded resources ----------------------------------------------------------------------------


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_a_body_trickled_past_the_body_timeout_gets_408_and_the_connection_closes(
    worker_class: str, tmp_path: Path
) -> None:
    env = {**_env("http://127.0.0.1:9/v1"), "GATEWAY_BODY_TIMEOUT": "1"}
    with run_gateway(tmp_path, env, "--worker-class", worker_class) as gateway:
        host, port = gateway.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
                b"authorization: Bearer " + TOKEN.encode() + b"\r\n"
                b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n{"
            )
            start = time.monotonic()
            answer = b""
            while time.monotonic() - start < 10:
                # A byte every 0.2 s, until the gateway answers (waiting on the socket).
                if select.select([sock], [], [], 0.2)[0]:
                    part = sock.recv(65536)
                    if not part:
                        break  # closed after the answer
                    answer += part
                elif not answer:
                    sock.sendall(b" ")
            elapsed = time.monotonic() - start
        metrics = httpx.get(gateway.url + "/metrics", headers=AUTH).text
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"body_timeout"' in answer
    assert 1.0 <= elapsed < 5.0  # answered at the deadline, then closed
    assert 'status="408"' in metrics


def test_no_redirect_is_built_from_the_host_header(either_gateway: GatewayProcess) -> None:
    for path in ("/status/", "/v1/models/", "/health/"):
        response = httpx.get(
            either_gateway.url + path,
            headers={**AUTH, "host": "evil.example"},
            follow_redirects=False,
        )
        assert response.status_code == 404, (path, response.status_code)
        assert "location" not in response.headers
        assert "evil.example" not in response.text


def test_the_dashboard_forbids_framing_and_foreign_scripts(either_gateway: GatewayProcess) -> None:
    response = httpx.get(either_gateway.url + "/dashboard")
    assert response.status_code == 200
    policy = {}
    for part in response.headers["content-security-policy"].split(";"):
        name, _, value = part.strip().partition(" ")
        policy[name] = value
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["connect-src"] == "'self'"
    script = response.text.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert policy["script-src"] == f"'sha256-{digest}'"
    assert response.headers["x-frame-options"] == "DENY"


def test_metrics_speak_openmetrics_when_asked(either_gateway: GatewayProcess) -> None:
    plain = httpx.get(either_gateway.url + "/metrics", headers=AUTH)
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    open_metrics = httpx.get(either_gateway.url + "/metrics", headers={**AUTH, "accept": accept})
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")
    assert "maxllm_gate_requests" in open_metrics.text
