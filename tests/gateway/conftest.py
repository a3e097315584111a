"""Real gateway processes on free ports, in front of the fake provider in its own process.

Everything here talks over real sockets, so async tests run on the real clock
(under asyncio and trio). Starting a process waits for it, with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from maxllm_gate.testing.fake_provider import fake_provider_process, key_fingerprint

TOKEN = "gw-test-token-7f3a"
FAST = "fast-model"  # plenty of capacity
SLOW = "slow-model"  # 60 RPM: one request a second, a burst of one
# Keys as the fake provider knows them; a test must never see one of these in an answer.
FAST_KEYS = ("sk-fake-fast-1-abcdef", "sk-fake-fast-2-abcdef")
SLOW_KEY = "sk-fake-slow-1-abcdef"
STRICT = "strict-model"  # the fake allows 120 RPM, the gateway is told 1200: 429s follow
STRICT_KEY = "sk-fake-strict-1-abcdef"
ALL_KEYS = (*FAST_KEYS, SLOW_KEY, STRICT_KEY)
FAKE_LIMITS = {
    FAST_KEYS[0]: {FAST: [60_000, 60_000_000]},
    FAST_KEYS[1]: {FAST: [60_000, 60_000_000]},
    SLOW_KEY: {SLOW: [60, 60_000]},
    STRICT_KEY: {STRICT: [120, 1_000_000]},
}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)  # real sockets want the real clock


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keys_config(url: str, limits: Mapping[str, Mapping[str, tuple[int, int]]]) -> str:
    """``API_KEYS_CONFIG`` for keys named ``k<i>`` behind the fake at ``url``, native transport."""
    return json.dumps(
        {
            f"k{index}": {
                "api_key": api_key,
                "provider": "openai",
                "api_base": url,
                "transport": "openai_compat",
                "models": {
                    model: {"rpm_limit": rpm, "tpm_limit": tpm}
                    for model, (rpm, tpm) in models.items()
                },
            }
            for index, (api_key, models) in enumerate(limits.items(), start=1)
        }
    )


class GatewayProcess:
    """One ``maxllm_gate-server`` process; ``url`` is its root, ``log`` its stderr so far."""

    def __init__(self, env: Mapping[str, str], args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = [sys.executable, "-m", "maxllm_gate.gateway.server"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), *args]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "API_"))}
        full_env.update(env)
        self.process = subprocess.Popen(
            command, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, cwd=log_path.parent
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the gateway exited with {self.process.returncode}:\n{self.log}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"the gateway did not answer within 60 s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """Send SIGTERM (a graceful shutdown), without waiting."""
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@contextlib.contextmanager
def run_gateway(
    tmp: Path, env: Mapping[str, str], *args: str, name: str = "gateway"
) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(env, list(args), tmp / f"{name}.log")
    try:
        yield gateway
    finally:
        gateway.stop()


def fake_stats(url: str) -> dict[str, dict[str, int]]:
    """The fake provider's counters, by key fingerprint."""
    stats: dict[str, dict[str, int]] = httpx.get(url.removesuffix("/v1") + "/stats").json()
    return stats


def fake_rate_limited(url: str, *api_keys: str) -> int:
    stats = fake_stats(url)
    return sum(stats.get(key_fingerprint(k), {}).get("rate_limited", 0) for k in api_keys)


@pytest.fixture(scope="session")
def fake_url() -> Iterator[str]:
    """The fake provider, in a process of its own for the whole session."""
    with fake_provider_process("--limits", json.dumps(FAKE_LIMITS)) as url:
        yield url


def base_env(fake_url: str, **extra: str) -> dict[str, str]:
    limits: dict[str, Any] = {
        FAST_KEYS[0]: {FAST: (6000, 6_000_000)},
        FAST_KEYS[1]: {FAST: (6000, 6_000_000)},
        SLOW_KEY: {SLOW: (60, 60_000)},
        STRICT_KEY: {STRICT: (1200, 1_000_000)},
    }
    return {
        "API_KEYS_CONFIG": keys_config(fake_url, limits),
        "GATEWAY_API_KEYS": f"other-token,{TOKEN}",
        "LOG_LEVEL": "INFO",
        **extra,
    }


@pytest.fixture(scope="session")
def gateway(fake_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The gateway every API test shares: asyncio worker, two fast keys and a slow one."""
    tmp = tmp_path_factory.mktemp("gateway")
    with run_gateway(tmp, base_env(fake_url)) as process:
        yield process


@pytest.fixture(scope="session")
def trio_gateway(
    fake_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The same gateway as `gateway`, under the trio worker."""
    tmp = tmp_path_factory.mktemp("trio-gateway")
    with run_gateway(tmp, base_env(fake_url), "--worker-class", "trio") as process:
        yield process


@pytest.fixture(params=["asyncio", "trio"])
def either_gateway(request: pytest.FixtureRequest) -> GatewayProcess:
    """The shared gateway under each worker class in turn."""
    name = "gateway" if request.param == "asyncio" else "trio_gateway"
    process: GatewayProcess = request.getfixturevalue(name)
    return process
