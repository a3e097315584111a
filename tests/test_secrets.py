"""No API key in logs, reprs, errors, status dicts or scores."""

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
from maxllm_gate._logging import configure_logging
from tests.support import MODEL, make_key


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


async def _ask(client: maxllm_gate, i: int, shown: list[object]) -> None:
    try:
        shown.append(await client.chat(MODEL, f"question {i}"))
    except GateError as exc:
        shown += [str(exc), repr(exc), exc.args]


def test_a_bad_key_config_error_does_not_echo_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        maxllm_gate(keys=[{"api_key": "sk-very-secret", "provider": "openai", "models": {}}])
    assert "sk-very-secret" not in str(info.value)
