"""LOG_LEVEL and DEBUG set what the library writes; every request event names its ids."""

from __future__ import annotations

import json

import pytest

from maxllm_gate import SimulatedProvider, maxllm_gate
from maxllm_gate._logging import configure_logging
from tests.support import MODEL, make_key


@pytest.fixture(autouse=True)
def _quiet_after() -> object:
    yield
    configure_logging("WARNING")


@pytest.mark.anyio
async def test_log_level_debug_writes_json_events_with_request_and_key_ids(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("DEBUG")
    async with maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=SimulatedProvider()) as c:
        response = await c.chat(MODEL, "hi")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    done = [e for e in events if e["event"] == "request done"]
    assert done == [
        {**done[0], "request_id": response.request_id, "key_id": "k1", "level": "debug"}
    ]


@pytest.mark.anyio
async def test_log_level_warning_writes_nothing_for_a_normal_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("WARNING")
    async with maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=SimulatedProvider()) as c:
        await c.chat(MODEL, "hi")
    assert capsys.readouterr().err == ""


def test_debug_mode_renders_for_people_and_from_env_applies_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "info")
    monkeypatch.setenv("DEBUG", "true")
    monkeypatch.delenv("API_KEYS_CONFIG", raising=False)
    client = maxllm_gate.from_env(dotenv_path=None, provider=SimulatedProvider())
    assert client.config.log_level == "INFO" and client.config.debug
    from maxllm_gate._logging import get_logger

    get_logger("test").info("hello", key_id="k9")
    line = capsys.readouterr().err
    assert "hello" in line and "key_id" in line and not line.startswith("{")
