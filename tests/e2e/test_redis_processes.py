"""Four OS processes share two keys through one redis-server, behind the fake provider.

Runs ``bench/redis_processes.py`` (each worker is its own process with its own
client) and checks its summary: what the issue for distributed state asks of it.
On the real clock; about 30 s a run. The same against a 3-master Redis Cluster
(``--cluster``); killing a Cluster master mid-run (``--kill-master``) is a bench
run only (docs/redis.md has its result), to keep CI time down.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).parents[2] / "bench" / "redis_processes.py"


def run_bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    for program in ("redis-server", "redis-cli"):
        if shutil.which(program) is None:
            pytest.fail(f"{program} is not on the PATH (apt-get install redis-server)")
    out = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary: dict[str, Any] = json.loads(out.read_text())
    assert not summary["worker_errors"] and not summary["hung"], proc.stdout[-3000:]
    return summary


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_four_processes_share_two_keys_without_a_429(tmp_path: Path, backend: str) -> None:
    summary = run_bench(tmp_path, "--backend", backend)
    assert summary["requests"] == 1200
    assert summary["successes"] == 1200, summary["failures"]
    assert summary["provider_rate_limited"] == 0
    assert summary["makespan"] <= 1.15 * summary["bound"]
    assert all(w["distributed_at_start"] and w["distributed_at_end"] for w in summary["workers"])
    assert all(w["distributed_transitions"] == [] for w in summary["workers"])


def test_four_processes_share_two_keys_on_a_redis_cluster(tmp_path: Path) -> None:
    summary = run_bench(tmp_path, "--cluster")
    assert summary["requests"] == 1200
    assert summary["successes"] == 1200, summary["failures"]
    assert summary["provider_rate_limited"] == 0
    assert summary["bound"] / summary["makespan"] >= 0.85
    # The workers' URL names the master holding neither key; the two keys live on
    # the two others, and every worker found out that it talks to a Cluster.
    holders = summary["key_holders"]
    url_port = int(summary["redis_url"].rsplit(":", 1)[1])
    assert len({*holders.values(), url_port}) == 3
    assert all(w["cluster"] is True for w in summary["workers"])
    assert all(w["distributed_at_start"] and w["distributed_at_end"] for w in summary["workers"])
    assert all(w["distributed_transitions"] == [] for w in summary["workers"])


def test_redis_killed_and_restarted_mid_run_loses_no_request(tmp_path: Path) -> None:
    summary = run_bench(tmp_path, "--kill-redis")
    # Every request ended in exactly one result (a worker counts each outcome once).
    assert summary["successes"] + sum(summary["failures"].values()) == 1200
    assert summary["without_result"] == 0
    assert summary["successes"] == 1200, summary["failures"]
    killed, restarted = summary["killed_at"], summary["restarted_at"]
    for worker in summary["workers"]:
        assert worker["distributed_at_start"]
        # Shared until the kill; per process from (about) the kill until the restart;
        # shared again a few seconds after it (reconnect attempts back off up to 5 s).
        transitions = worker["distributed_transitions"]
        flags = [flag for _, flag in transitions]
        assert flags[:1] == [False], transitions
        assert killed - 0.2 <= transitions[0][0] <= killed + 2.5
        if worker["distributed_at_end"]:
            assert flags == [False, True], transitions
            assert restarted - 0.2 <= transitions[1][0] <= restarted + 8.0
        else:  # it finished its share on memory, before it could see Redis again
            assert flags == [False], transitions
            assert worker["makespan"] <= restarted + 8.0
    assert sum(w["distributed_at_end"] for w in summary["workers"]) >= 1
