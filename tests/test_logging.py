"""LOG_LEVEL and DEBUG set what the library writes; every request event names its ids."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import anyio
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


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_client_never_shut_down_ends_with_its_event_loop_without_an_error(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its actors live in a task of the loop; the loop's end cancels it, as documented.
    configure_logging("WARNING")

    async def main() -> None:
        client = maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=SimulatedProvider())
        await client.chat(MODEL, "hi")

    anyio.run(main, backend=backend)
    assert "actor host stopped" not in capsys.readouterr().err


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


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip() + "|" + result.stderr.strip()


def test_structlog_loads_with_the_first_event_written_not_before() -> None:
    out = _run(
        """
        import sys
        from maxllm_gate._logging import get_logger
        log = get_logger("t")
        log.info("filtered out")  # below WARNING
        print("structlog" in sys.modules)
        log.warning("written", key_id="k1")
        print("structlog" in sys.modules)
        """
    )
    printed, _, err = out.partition("|")
    assert printed.split() == ["False", "True"]
    assert json.loads(err)["event"] == "written"


def test_an_applications_structlog_configuration_is_used() -> None:
    out = _run(
        """
        import structlog
        from maxllm_gate._logging import get_logger, register_secret
        structlog.configure(processors=[structlog.processors.KeyValueRenderer()])
        register_secret("sk-secret-123")
        get_logger("t").debug("seen", detail="key sk-secret-123")
        """
    )
    assert "event='seen'" in out and "<redacted>" in out and "sk-secret-123" not in out
