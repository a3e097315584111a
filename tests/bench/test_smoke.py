"""Every script in bench/ runs: each in its `--smoke` mode (seconds, a few requests), so a
change that breaks a script fails the suite instead of the next benchmark run. The
numbers are not checked here: the scripts' full runs are benchmarks, not tests.

The Redis ones start their own `redis-server` (nox installs it). compare.py runs each
module of bench/peers with this Python when bench/.peers-venv is missing.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"

# Each script's smoke runs: the arguments after `--smoke`. Under trio too where the
# script takes --backend and its run costs little.
SMOKE_RUNS: dict[str, list[list[str]]] = {
    "accounting.py": [[], ["--backends", "trio", "--no-gateway", "--no-oversize"]],
    "anthropic.py": [[], ["--backend", "trio"]],  # LiteLLM's Anthropic path
    "compare.py": [["--output", "{tmp}/benchmarks.md"]],
    "embeddings.py": [[], ["--backend", "trio"]],
    "gateway.py": [[]],  # native transport, asyncio and trio workers
    "overhead.py": [[]],  # asyncio and trio
    "redis_latency.py": [[], ["--backend", "trio"]],
    "redis_processes.py": [[]],
    "redis_throughput.py": [[]],  # 1 and 2 processes, half a second each
    "scale.py": [[], ["--backend", "trio"]],
    "simulate.py": [[], ["--backend", "trio"]],
    "soak.py": [[]],  # asyncio and trio
    "transports.py": [[]],  # asyncio and trio
}


def test_every_script_has_a_smoke_run() -> None:
    assert set(SMOKE_RUNS) == {path.name for path in BENCH.glob("*.py")}


@pytest.mark.parametrize(
    ("script", "args"),
    [(script, args) for script, runs in SMOKE_RUNS.items() for args in runs],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_smoke_run(script: str, args: list[str], tmp_path: pathlib.Path) -> None:
    command = [sys.executable, str(BENCH / script), "--smoke"]
    command += [arg.format(tmp=tmp_path) for arg in args]
    result = subprocess.run(command, cwd=BENCH.parent, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    if script == "compare.py":  # the page and its chart, written where it was told
        assert "### lenient" in (tmp_path / "benchmarks.md").read_text()
        assert (tmp_path / "benchmarks.png").stat().st_size > 0
