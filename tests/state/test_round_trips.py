"""Redis commands per request, counted by the server itself (``MONITOR``).

The floor for reserve-then-reconcile is two scripts a request: one at admission,
one when the call ends (its headers, refunds and cooldown together). The count
is the server's, of commands clients sent; the commands a script runs inside
Redis are not round trips and are left out.
"""

from __future__ import annotations

import re
import socket
import threading

import anyio
import pytest

from maxllm_gate import SimulatedProvider, maxllm_gate
from tests.state.conftest import RedisServer
from tests.support import MODEL, make_key

pytestmark = pytest.mark.anyio

REQUESTS = 200
# "<time> [<db> <client address>] "<command>" ...": a script's own commands show
# "[<db> lua]" instead of an address.
_LINE = re.compile(r'^\+\d+\.\d+ \[\d+ (?P<who>[^\]]+)\] "(?P<command>[^"]+)"')


class Monitor:
    """Every command the server receives, from a ``MONITOR`` connection in a thread."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(b"MONITOR\r\n")
        self._data = bytearray()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stopped.is_set():
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                return
            self._data += chunk

    def stop(self) -> list[str]:
        """The client commands seen (names, upper case), scripts' own excluded."""
        self._stopped.set()
        self._thread.join()
        self._sock.close()
        commands = []
        for line in self._data.decode(errors="replace").split("\r\n"):
            match = _LINE.match(line)
            if match and match["who"] != "lua":
                commands.append(match["command"].upper())
        return commands


# Extra cells (daily caps) ride on the same scripts.
EXTRA_CELLS = {"rpd_limit": 10**6, "tpd_limit": 10**9}


@pytest.mark.parametrize(
    ("accounting", "extra"),
    [("admission", {}), ("usage", {}), ("admission", EXTRA_CELLS)],
    ids=["admission", "usage", "extra-cells"],
)
async def test_a_request_costs_at_most_two_point_two_commands(
    redis_server: RedisServer, accounting: str, extra: dict[str, int]
) -> None:
    keys = [
        make_key(k, 6000, 1_000_000, token_accounting=accounting, **extra) for k in ("k1", "k2")
    ]
    provider = SimulatedProvider(latency=0.05, token_accounting=accounting)
    async with maxllm_gate(keys=keys, provider=provider, redis_url=redis_server.url) as client:
        await client.chat(MODEL, "warm-up: connections and scripts loaded")
        monitor = Monitor(redis_server.port)
        await anyio.sleep(0.2)  # MONITOR is on before the first request
        async with anyio.create_task_group() as tg:
            for i in range(REQUESTS):
                tg.start_soon(client.chat, MODEL, f"question {i}")
        await anyio.sleep(0.2)  # the last settlements, after their callers' answers
        commands = monitor.stop()
    assert provider.rate_limited == 0
    per_request = len(commands) / REQUESTS
    print(f"{accounting}: {len(commands)} commands, {per_request:.3f} per request")
    assert set(commands) <= {"EVALSHA", "PING"}, set(commands)
    assert 2.0 <= per_request <= 2.2
