"""The chat route as a plain ASGI app, in process: how its disconnect watch ends.

A scripted ASGI server (a ``receive`` and a ``send``) in front of a client over
the simulated provider; no sockets, nothing waits on the clock.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from maxllm_gate import KeyConfig, maxllm_gate
from maxllm_gate.gateway.app import Gateway
from maxllm_gate.gateway.settings import GatewaySettings
from maxllm_gate.providers.simulated import SimulatedProvider

TOKEN = "route-test-token"
MODEL = "route-test-model"  # no tokenizer knows it: nothing to load
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
SCOPE = {
    "type": "http",
    "method": "POST",
    "path": "/v1/chat/completions",
    "headers": [(b"authorization", f"Bearer {TOKEN}".encode())],
}


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    key = KeyConfig(
        api_key="sk-route-test-0123456789",
        provider="openai",
        models={MODEL: {"rpm_limit": 600, "tpm_limit": 100_000}},
    )
    # Calls take an hour: an answer comes only if the test lets the clock run.
    client = maxllm_gate(keys=[key], provider=SimulatedProvider(latency=3600.0))
    async with client:
        yield Gateway(client, GatewaySettings(api_tokens=(TOKEN,)))


class Server:
    """Gives the body, then what ``after_body`` says; keeps what the app sends."""

    def __init__(self, after_body: str) -> None:
        self.after_body = after_body
        self.sent: list[dict[str, Any]] = []
        self._body_given = False

    async def receive(self) -> dict[str, Any]:
        if not self._body_given:
            self._body_given = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        if self.after_body == "disconnect":
            return {"type": "http.disconnect"}
        await anyio.sleep_forever()  # a server that never reports the end
        raise AssertionError  # pragma: no cover

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


@pytest.mark.anyio
async def test_a_caller_who_hangs_up_gets_nothing_and_leaves_no_call(gateway: Gateway) -> None:
    server = Server(after_body="disconnect")
    await gateway.chat_completions(SCOPE, server.receive, server.send)
    assert server.sent == []
    assert gateway.client.status()["outstanding"] == 0
    assert gateway.metrics.totals["errors"] == 1


@pytest.mark.anyio
async def test_the_answer_ends_the_watch_even_if_the_server_never_reports_the_end() -> None:
    key = KeyConfig(
        api_key="sk-route-test-0123456789",
        provider="openai",
        models={MODEL: {"rpm_limit": 600, "tpm_limit": 100_000}},
    )
    async with maxllm_gate(keys=[key], provider=SimulatedProvider()) as client:
        gateway = Gateway(client, GatewaySettings(api_tokens=(TOKEN,)))
        server = Server(after_body="nothing")
        with anyio.fail_after(10):
            await gateway.chat_completions(SCOPE, server.receive, server.send)
    start, body = server.sent
    assert start["status"] == 200
    assert json.loads(body["body"])["choices"][0]["message"]["content"]
