"""Virtual time: the one module, and the private corner of trio it reaches into."""

from __future__ import annotations

import pathlib
import random
import re
import sys

import anyio
import pytest
import trio
import trio.testing
from packaging.requirements import Requirement

from maxllm_gate.testing import run_virtual, seeded_trio_scheduler
from maxllm_gate.testing.virtual_time import _trio_private

PYPROJECT = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_installed_trio_is_in_the_declared_range() -> None:
    # The private names below are checked for this trio; the range says which ones that covers.
    (line,) = re.findall(r'^\s*"(trio[<>=!~ ].*?)"', PYPROJECT.read_text(), re.MULTILINE)
    trio_requirement = Requirement(line)
    assert trio_requirement.specifier.contains(trio.__version__)
    assert any(spec.operator == "<" for spec in trio_requirement.specifier)


def test_trio_still_has_the_private_names() -> None:
    mock_clock, rng = _trio_private()
    assert mock_clock is trio.testing.MockClock
    assert isinstance(rng, random.Random)


async def _sleep_and_shuffle() -> tuple[float, list[int]]:
    order: list[int] = []

    async def one(index: int) -> None:
        await anyio.sleep(1)  # all woken together: trio shuffles them
        order.append(index)

    async with anyio.create_task_group() as tg:
        for index in range(8):
            tg.start_soon(one, index)
    await anyio.sleep(3600)
    return anyio.current_time(), order


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_hour_of_sleeping_takes_no_time(backend: str) -> None:
    now, _ = run_virtual(_sleep_and_shuffle, backend=backend)
    assert now == pytest.approx(3601)


def test_a_seed_repeats_trio_s_order_and_is_undone_after() -> None:
    _, rng = _trio_private()
    assert rng is not None
    before = rng.getstate()
    orders = {tuple(run_virtual(_sleep_and_shuffle, seed=7)[1]) for _ in range(3)}
    assert len(orders) == 1
    with seeded_trio_scheduler(7):
        assert rng.getstate() != before
    assert rng.getstate() == before


def test_a_command_on_virtual_time_does_not_import_pytest() -> None:
    import subprocess

    code = (
        "import sys, anyio\n"
        "from maxllm_gate.testing import run_virtual\n"
        "run_virtual(anyio.sleep, 5)\n"
        "print('pytest' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
