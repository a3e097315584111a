"""The server process: its worker classes, its configuration, and its graceful shutdown."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from maxllm_gate.testing.fake_provider import fake_provider_process
from tests.gateway.conftest import (
    FAST,
    FAST_KEYS,
    SLOW,
    SLOW_KEY,
    TOKEN,
    base_env,
    keys_config,
    run_gateway,
)

HELLO = [{"role": "user", "content": "Say hello"}]


def test_the_trio_worker_serves_plain_and_streamed_requests(fake_url: str, tmp_path: Path) -> None:
    with run_gateway(tmp_path, base_env(fake_url), "--worker-class", "trio") as gateway:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TOKEN, max_retries=0)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda _: client.chat.completions.create(model=FAST, messages=HELLO),
                    range(16),
                )
            )
        assert all(a.choices[0].message.content == "lorem " * 16 for a in answers)
        stream = client.chat.completions.create(
            model=FAST, messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "lorem " * 16
        )
        assert chunks[-1].usage is not None
        assert gateway.stop() == 0


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_sigterm_drains_the_requests_in_flight_then_exits(
    worker_class: str, tmp_path: Path
) -> None:
    limits = json.dumps({FAST_KEYS[0]: {FAST: [600, 600_000]}})
    with fake_provider_process("--limits", limits, "--latency", "1.5") as url:
        env = {
            "API_KEYS_CONFIG": keys_config(url, {FAST_KEYS[0]: {FAST: (600, 600_000)}}),
            "GATEWAY_API_KEYS": TOKEN,
        }
        with run_gateway(tmp_path, env, "--worker-class", worker_class) as gateway:
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TOKEN, max_retries=0)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                in_flight = [
                    pool.submit(client.chat.completions.create, model=FAST, messages=HELLO)
                    for _ in range(2)
                ]
                deadline = time.monotonic() + 10
                headers = {"authorization": f"Bearer {TOKEN}"}
                while httpx.get(gateway.url + "/status", headers=headers).json()["in_flight"] < 2:
                    assert time.monotonic() < deadline, "the calls never started"
                    time.sleep(0.02)
                gateway.terminate()
                answers = [f.result(timeout=20) for f in in_flight]
            assert [a.choices[0].message.content for a in answers] == ["lorem " * 16] * 2
            assert gateway.process.wait(timeout=20) == 0
            with pytest.raises(httpx.ConnectError):
                httpx.get(gateway.url + "/health")
            assert "draining" in gateway.log


def _server(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maxllm_gate.gateway.server", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_refuses_to_start_without_tokens_unless_told_to_run_open(fake_url: str) -> None:
    env = {"PATH": "/usr/bin:/bin", **base_env(fake_url)}
    del env["GATEWAY_API_KEYS"]
    result = _server(env, "--env-file", "")
    assert result.returncode == 2
    assert "GATEWAY_API_KEYS" in result.stderr
    assert "GATEWAY_ALLOW_UNAUTHENTICATED" in result.stderr


def test_an_env_file_named_but_missing_exits_2(fake_url: str) -> None:
    env = {"PATH": "/usr/bin:/bin", **base_env(fake_url)}
    result = _server(env, "--env-file", "/nonexistent.env")
    assert result.returncode == 2
    assert "--env-file: no such file: /nonexistent.env" in result.stderr


def test_a_bad_configuration_exits_2_naming_the_variable_and_no_key(fake_url: str) -> None:
    env = {"PATH": "/usr/bin:/bin", **base_env(fake_url), "MAX_RETRIES": "many"}
    result = _server(env, "--env-file", "")
    assert result.returncode == 2
    assert "MAX_RETRIES" in result.stderr
    assert all(key not in result.stderr for key in FAST_KEYS)


def test_running_open_is_allowed_when_asked_and_logs_a_warning(
    fake_url: str, tmp_path: Path
) -> None:
    env = base_env(fake_url, GATEWAY_ALLOW_UNAUTHENTICATED="true")
    del env["GATEWAY_API_KEYS"]
    with run_gateway(tmp_path, env) as gateway:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="anything", max_retries=0)
        assert client.chat.completions.create(model=FAST, messages=HELLO).choices
        assert httpx.get(gateway.url + "/status").status_code == 200
        assert "WITHOUT authentication" in gateway.log


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_requests_still_queued_when_the_drain_times_out_get_503_shutting_down(
    worker_class: str, tmp_path: Path
) -> None:
    limits = json.dumps({SLOW_KEY: {SLOW: [60, 60_000]}})
    with fake_provider_process("--limits", limits) as url:
        env = {
            "API_KEYS_CONFIG": keys_config(url, {SLOW_KEY: {SLOW: (60, 60_000)}}),
            "GATEWAY_API_KEYS": TOKEN,
            "SHUTDOWN_TIMEOUT": "1",
        }
        with run_gateway(tmp_path, env, "--worker-class", worker_class) as gateway:
            headers = {"authorization": f"Bearer {TOKEN}"}

            def ask(stream: bool) -> httpx.Response:
                body = {"model": SLOW, "messages": HELLO, "stream": stream}
                return httpx.post(
                    gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
                )

            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                # 60 RPM: one a second, so most of these wait past the 1 s drain.
                asked = [pool.submit(ask, n % 2 == 1) for n in range(6)]
                deadline = time.monotonic() + 10
                # All six accepted before the signal (the server takes no new connection
                # after it), four or more of them still queued.
                while True:
                    status = httpx.get(gateway.url + "/status", headers=headers).json()
                    done = sum(key["successes"] for key in status["keys"].values())
                    if status["outstanding"] + done >= 6 and status["queued"] >= 4:
                        break
                    assert time.monotonic() < deadline, "the requests never queued"
                    time.sleep(0.02)
                gateway.terminate()
                answers = [f.result(timeout=20) for f in asked]
            statuses = sorted(a.status_code for a in answers)
            assert set(statuses) == {200, 503}, statuses
            for answer in answers:
                if answer.status_code == 503:
                    assert answer.json()["error"]["code"] == "shutting_down"
                    assert answer.headers["retry-after"] == "1"
            assert gateway.process.wait(timeout=20) == 0
