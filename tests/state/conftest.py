"""A real Redis for the state tests (never a fake), and the real clock.

``redis_url`` is ``REDIS_URL`` from the environment if set, else a
``redis-server`` started on a free port for the session. ``redis_cluster_url``
is ``REDIS_CLUSTER_URL`` if set, else one node of a 3-master Redis Cluster
started for the session (``redis-server --cluster-enabled yes`` and
``redis-cli --cluster create``). ``redis_server`` is a private server a test
may kill and restart. With neither the variables nor ``redis-server`` and
``redis-cli`` on PATH the tests fail (they are not skipped: CI must run them).

Redis talks over real sockets, so these tests run on the real clock under both
asyncio and trio, not on the virtual time of the other tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import coredis
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

    def __init__(
        self, directory: Path, port: int | None = None, *, flags: dict[str, str] | None = None
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.flags = flags or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(_NO_REDIS)
        flags = {"--port": str(self.port), "--bind": "127.0.0.1", "--save": ""}
        flags.update({"--appendonly": "no", "--dir": str(self.directory), **self.flags})
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


class RedisClusterServers:
    """Three ``redis-server`` masters on 127.0.0.1 joined into one Redis Cluster."""

    def __init__(self, directory: Path) -> None:
        self.servers: list[RedisServer] = []
        for index in range(3):
            folder = directory / f"node{index}"
            folder.mkdir()
            flags = {"--cluster-enabled": "yes", "--cluster-config-file": "nodes.conf"}
            # The bus port defaults to port + 10000, which a free port may not have.
            flags["--cluster-port"] = str(free_port())
            self.servers.append(RedisServer(folder, flags=flags))

    @property
    def url(self) -> str:
        """The second node: it holds the middle third of the slots, neither ``k1``'s
        nor ``k2``'s, so the tests reach keys through a node that does not hold them."""
        return self.servers[1].url

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail(_NO_REDIS + " (and `redis-cli`, to create the Redis Cluster)")
        for server in self.servers:
            server.start()
        nodes = [f"127.0.0.1:{server.port}" for server in self.servers]
        create = [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        deadline = time.monotonic() + 20.0
        for server in self.servers:
            while (
                b"cluster_state:ok"
                not in subprocess.run(
                    [cli, "-p", str(server.port), "cluster", "info"],
                    capture_output=True,
                    check=False,
                ).stdout
            ):
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("the Redis Cluster did not reach cluster_state:ok within 20 s")
                time.sleep(0.05)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@contextlib.asynccontextmanager
async def raw_redis(url: str) -> AsyncIterator[coredis.Redis[str] | coredis.RedisCluster[str]]:
    """A plain coredis client for ``url``: a cluster client if it names a Cluster node."""
    async with coredis.Redis.from_url(url, decode_responses=True) as single:
        info = await single.info("cluster")
        if str(info.get("cluster_enabled", 0)) != "1":
            yield single
            return
    with warnings.catch_warnings():  # coredis 6.9 warns about its own from_url
        warnings.simplefilter("ignore", DeprecationWarning)
        cluster = coredis.RedisCluster.from_url(url, decode_responses=True)
    async with cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = os.environ.get("REDIS_CLUSTER_URL")
    if env:
        yield env
        return
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(params=["server", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """A test using it runs against one redis-server, then against the Redis Cluster."""
    name = "redis_url" if request.param == "server" else "redis_cluster_url"
    return str(request.getfixturevalue(name))


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
