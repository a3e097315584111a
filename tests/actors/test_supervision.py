"""A crash stays inside its call: a bug in one call's bookkeeping neither cancels the
other calls on its key nor sends any call twice; the log names the root cause."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from maxllm_gate import SimulatedProvider, TransientError, maxllm_gate
from maxllm_gate.actors import KeyActor
from maxllm_gate.config import maxllm_gate_config
from maxllm_gate.errors import ConfigError
from tests.support import MODEL, make_key

pytestmark = pytest.mark.anyio

FAULTY = "the third"


async def _five_calls(client: maxllm_gate) -> dict[str, Any]:
    outcomes: dict[str, Any] = {}

    async def one(name: str) -> None:
        try:
            outcomes[name] = await client.chat(MODEL, f"request {name}", max_tokens=10)
        except Exception as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        for name in ("the first", "the second", FAULTY, "the fourth", "the fifth"):
            tg.start_soon(one, name)
    return outcomes


async def test_a_fault_handling_one_answer_leaves_the_other_calls_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    on_success = KeyActor._on_success

    async def faulty(self: KeyActor, job: Any, *args: Any) -> None:
        if FAULTY in job.messages[0]["content"]:
            raise RuntimeError("injected fault in the completion handling")
        await on_success(self, job, *args)

    monkeypatch.setattr(KeyActor, "_on_success", faulty)
    provider = SimulatedProvider(latency=0.5)
    caplog.set_level(logging.ERROR, logger="maxllm_gate")
    async with maxllm_gate(keys=[make_key("k1", 600, 600_000)], provider=provider) as client:
        outcomes = await _five_calls(client)
        restarts = client._supervisor.restarts
    assert sum(provider.sends.values()) == 5  # nothing sent twice
    assert provider.duplicates == 0
    answered = [o for name, o in outcomes.items() if name != FAULTY]
    assert [o.attempts for o in answered] == [1, 1, 1, 1]
    failed = outcomes[FAULTY]
    assert isinstance(failed, TransientError)
    assert "not resent" in str(failed)
    assert restarts == 0  # the key's actor never went down
    [record] = [r for r in caplog.records if "bookkeeping failed" in r.getMessage()]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["error"] == "RuntimeError: injected fault in the completion handling"
    assert "Traceback" in fields["traceback"] and "faulty" in fields["traceback"]


async def test_a_fault_before_the_call_leaves_puts_it_back_in_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The provider never saw the call: it is queued again and answered."""
    provider = SimulatedProvider(latency=0.5)
    faults = [RuntimeError("injected fault before the send")]
    async with maxllm_gate(keys=[make_key("k1", 600, 600_000)], provider=provider) as client:
        state = client._state
        state_started = state.started

        async def started(key_id: str, model: str, mark: Any, admitted_at: float) -> None:
            if faults:
                raise faults.pop()
            await state_started(key_id, model, mark, admitted_at)

        monkeypatch.setattr(state, "started", started)
        outcomes = await _five_calls(client)
        restarts = client._supervisor.restarts
    assert all(not isinstance(o, BaseException) for o in outcomes.values())
    assert sorted(o.attempts for o in outcomes.values()) == [1, 1, 1, 1, 2]
    assert sum(provider.sends.values()) == 5
    assert restarts == 0


async def test_an_actor_crash_logs_its_root_cause_with_the_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An actor that does crash (here the dispatcher) is logged by what raised inside
    it, not as "ExceptionGroup (1 sub-exception)"."""
    provider = SimulatedProvider(latency=0.1)
    caplog.set_level(logging.ERROR, logger="maxllm_gate")
    async with maxllm_gate(
        keys=[make_key("k1", 600, 600_000)], provider=provider, restart_base=0.5
    ) as client:
        dispatcher = client._dispatcher
        drain = dispatcher._drain_lane
        crashes = [0]

        async def crashing(*args: Any) -> float:
            if not crashes[0]:
                crashes[0] += 1
                async with anyio.create_task_group():  # an error arrives as a group
                    raise KeyError("injected dispatcher fault")
            return await drain(*args)

        dispatcher._drain_lane = crashing  # type: ignore[method-assign]
        started = anyio.current_time()
        response = await client.chat(MODEL, "hello", max_tokens=10)
        waited = anyio.current_time() - started
    assert response.attempts == 1
    assert waited >= 0.5  # restart_base
    [record] = [r for r in caplog.records if "actor crashed" in r.getMessage()]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["error"] == "KeyError: 'injected dispatcher fault'"
    assert "crashing" in fields["traceback"]


def test_restart_backoff_is_configured_and_checked() -> None:
    config = maxllm_gate_config(restart_base=0.5, restart_max=10)
    assert (config.restart_base, config.restart_max) == (0.5, 10.0)
    client = maxllm_gate(config)
    assert (client._supervisor.restart_base, client._supervisor.restart_max) == (0.5, 10.0)
    with pytest.raises(ConfigError, match=r"restart_max: must be >= restart_base"):
        maxllm_gate_config(restart_base=5, restart_max=1)
