"""LOG_LEVEL and DEBUG set what the library writes; every request event names its ids."""

from __future__ import annotations

import json
import logging
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


def test_debug_mode_renders_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", debug=True)
    from maxllm_gate._logging import get_logger

    get_logger("maxllm_gate.test").info("hello", key_id="k9")
    line = capsys.readouterr().err
    assert "hello" in line and "key_id" in line and not line.startswith("{")


def test_from_env_leaves_logging_to_the_application(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("DEBUG", "true")
    monkeypatch.delenv("API_KEYS_CONFIG", raising=False)
    before = logging.getLogger("maxllm_gate").level
    client = maxllm_gate.from_env(dotenv_path=None, provider=SimulatedProvider())
    assert client.config.log_level == "DEBUG" and client.config.debug  # the gateway's to use
    assert logging.getLogger("maxllm_gate").level == before


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip() + "|" + result.stderr.strip()


# An embedded client: a revoked key beside a good one, in a fresh interpreter, so the
# application's logging configuration is the only one.
_EMBEDDED = """
import logging, anyio
from maxllm_gate import SimulatedProvider, maxllm_gate
from tests.support import MODEL, make_key

records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append(repr(vars(record)) + self.format(record))

{setup}
keys = [make_key("bad", 6000, 1_000_000), make_key("good", 6000, 1_000_000)]  # never waits
provider = SimulatedProvider()
provider.revoke("bad")

async def main():
    async with maxllm_gate(keys=keys, provider=provider, strategy="round_robin") as client:
        for i in range(4):
            await client.chat(MODEL, f"question {{i}}")

anyio.run(main)
print(sum(k.api_key in r for k in keys for r in records), len(records))
"""


def test_an_embedded_client_prints_nothing_on_its_own() -> None:
    out = _run(_EMBEDDED.format(setup=""))
    printed, _, err = out.partition("|")
    assert (printed, err) == ("0 0", "")


def test_warnings_reach_the_applications_handlers_with_keys_masked() -> None:
    setup = "logging.basicConfig(format='%(levelname)s %(name)s %(message)s')\n"
    setup += "logging.getLogger('maxllm_gate').addHandler(Keep())"
    out = _run(_EMBEDDED.format(setup=setup))
    printed, _, err = out.partition("|")
    assert printed.split()[0] == "0"  # no key in any record, in any of its attributes
    assert int(printed.split()[1]) >= 1
    assert "WARNING maxllm_gate.actors.key key disabled key_id=bad" in err
    assert "structlog" not in err


def test_the_applications_level_silences_the_library() -> None:
    setup = "logging.basicConfig()\n"
    setup += "logging.getLogger('maxllm_gate').setLevel(logging.CRITICAL)"
    out = _run(_EMBEDDED.format(setup=setup))
    assert out == "0 0|"


def test_each_record_carries_the_event_and_its_fields() -> None:
    out = _run(
        """
        import logging, json
        from maxllm_gate._logging import get_logger, register_secret
        seen = []
        class Keep(logging.Handler):
            def emit(self, record):
                seen.append((record.getMessage(), record.event, record.fields))
        logging.getLogger("maxllm_gate").addHandler(Keep())
        logging.getLogger("maxllm_gate").setLevel(logging.DEBUG)
        register_secret("sk-secret-123")
        get_logger("maxllm_gate.t").debug("seen", detail="key sk-secret-123", n=3)
        print(json.dumps(seen))
        """
    )
    printed, _, err = out.partition("|")
    assert json.loads(printed) == [
        [
            "seen detail='key <redacted>' n=3",
            "seen",
            {"detail": "key <redacted>", "n": 3},
        ]
    ]
    assert err == ""


def test_structlog_is_not_imported_by_the_library() -> None:
    out = _run(
        """
        import logging, sys
        logging.basicConfig()
        from maxllm_gate._logging import get_logger
        get_logger("maxllm_gate.t").warning("written", key_id="k1")
        print("structlog" in sys.modules)
        """
    )
    printed, _, err = out.partition("|")
    assert printed == "False"
    assert err == "WARNING:maxllm_gate.t:written key_id=k1"
