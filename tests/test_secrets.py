"""No API key in logs, reprs, errors, status dicts, scores, metrics or Redis.

The last test of the session greps everything the suite captured (every test's
stdout, stderr and log records, every failure's text, and everything the tests
passed to `tests.support.expose`) for every API key any client saw. The fault
suite (``tests/faults``) logs at DEBUG, so every level is in it; its Redis tests
scan the server with `tests.support.assert_no_secret_in_redis`.
"""

from __future__ import annotations

import anyio
import pytest

from maxllm_gate import (
    ConfigError,
    GateError,
    SimulatedProvider,
    TransientError,
    maxllm_gate,
)
from maxllm_gate._logging import _secrets, configure_logging
from tests.secret_audit import CAPTURED
from tests.support import MODEL, SHOWN, expose, make_key


@pytest.mark.anyio
async def test_no_raw_key_reaches_anything_the_library_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = [make_key("k1", 60, 10_000), make_key("k2", 60, 10_000), make_key("k3", 6, 10_000)]
    secrets = [k.api_key for k in keys]
    configure_logging("DEBUG")
    provider = SimulatedProvider(limits={"k3": {MODEL: (1, 10_000)}})
    provider.revoke("k1")
    provider.inject(TransientError(f"upstream said: bad key {secrets[1]}", status_code=500))
    shown: list[object] = []
    try:
        async with maxllm_gate(keys=keys, provider=provider, max_retries=0) as client:
            shown += [repr(client), repr(client.config), *map(repr, keys)]
            async with anyio.create_task_group() as tg:
                for i in range(8):
                    tg.start_soon(_ask, client, i, shown)
            shown += [client.status(), client.capacity(), client.latency(), client.scores()]
    finally:
        configure_logging("WARNING")
    captured = capsys.readouterr()
    text = "\n".join([captured.out, captured.err, *map(str, shown)])
    assert '"request_id"' in captured.err and '"key_id"' in captured.err
    for secret in secrets:
        assert secret not in text
    expose(*shown)


async def _ask(client: maxllm_gate, i: int, shown: list[object]) -> None:
    try:
        shown.append(await client.chat(MODEL, f"question {i}"))
    except GateError as exc:
        shown += [str(exc), repr(exc), exc.args]


def test_a_bad_key_config_error_does_not_echo_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        maxllm_gate(keys=[{"api_key": "sk-very-secret", "provider": "openai", "models": {}}])
    assert "sk-very-secret" not in str(info.value)


@pytest.mark.anyio
async def test_metrics_labels_and_recent_errors_never_hold_a_key() -> None:
    from maxllm_gate.gateway.metrics import GatewayMetrics

    keys = [make_key("m1", 600, 100_000), make_key("m2", 600, 100_000)]
    provider = SimulatedProvider()
    provider.inject(TransientError(f"echoing {keys[0].api_key}", status_code=500), times=3)
    async with maxllm_gate(keys=keys, provider=provider, max_retries=1) as client:
        metrics = GatewayMetrics(client, [MODEL])
        for i in range(4):
            try:
                metrics.answered(await client.chat(MODEL, f"q{i}"), MODEL)
            except TransientError as exc:
                metrics.failed(MODEL, 502, type(exc).__name__, str(exc), exc.key_id)
        metrics.failed(MODEL, 400, "ValidationError", f"bad {keys[1].api_key}", None)
        text = metrics.render()[0].decode() + repr(metrics.dashboard())
    assert "maxllm_gate_requests" in text and 'key_id="m1"' in text
    for key in keys:
        assert key.api_key not in text
    expose(text)


def _audited_secrets() -> list[str]:
    """Every API key a client saw this session that looks like one (the fuzz tests
    also register one-letter keys, which any text contains)."""
    return sorted(s for s in _secrets if len(s) >= 10 and s.startswith(("sk-", "gsk_")))


def test_nothing_the_suite_captured_holds_an_api_key() -> None:
    """Runs last (see tests/secret_audit.py): greps all the session captured."""
    secrets = _audited_secrets()
    assert secrets, "no client registered a key before the audit: it would check nothing"
    haystack = "\n".join([*CAPTURED, *SHOWN])
    leaked = [s for s in secrets if s in haystack]
    assert not leaked, f"{len(leaked)} API keys appear in captured output or shown objects"
    print(f"audited {len(haystack):,} characters for {len(secrets)} keys")
