"""A real Redis for the state tests (never a fake), and the real clock.

``redis_url`` is ``REDIS_URL`` from the environment if set, else a
``redis-server`` started on a free port for the session. ``redis_server`` is a
private server a test may kill and restart. With neither ``REDIS_URL`` nor
``redis-server`` on PATH the tests fail (they are not skipped: CI must run them).

Redis talks over real sockets, so these tests run on the real clock under both
asyncio and trio, not on the virtual time of the other tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_NO_REDIS = (
    "the Redis state tests need a real Redis: put `redis-server` on PATH "
    "(e.g. `apt-get install redis-server`) or set REDIS_URL=redis://host:port"
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, without persistence."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(_NO_REDIS)
        flags = {"--port": str(self.port), "--bind": "127.0.0.1", "--save": ""}
        flags.update({"--appendonly": "no", "--dir": str(self.directory)})
        self.process = subprocess.Popen(
            [binary, *(part for pair in flags.items() for part in pair)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited with {self.process.returncode} on {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        pytest.fail(f"redis-server did not answer on port {self.port} within 10 s")

    def stop(self) -> None:
        """Kill the server (SIGKILL: as abrupt as a crash)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = os.environ.get("REDIS_URL")
    if env:
        yield env
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private server, running; the test may ``stop()`` and ``start()`` it (same port)."""
    if shutil.which("redis-server") is None:
        pytest.fail(_NO_REDIS + " (this test kills and restarts its own server)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses, so tests may share one server."""
    return f"test-{uuid.uuid4().hex[:12]}"
