"""How long ``maxllm_gate simulate`` takes, against how much traffic it covers.

    python bench/simulate.py [--runs 3] [--backend asyncio|trio]

Runs the command as a user does (a new process each time, start-up included) on
workloads that span from minutes to hours of virtual time, and prints, for each,
the span it predicted (the makespan), the wall time (best of ``--runs``) and the
wall time per request. The cost grows with the number of requests, not with
the span they cover: the scheduler's work per request, the simulated provider's
and the event loop's, plus about 0.15 s to start Python and import.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Two keys as in docs/cli.md: 60 and 120 RPM (1 s slices: 1 and 2 requests a second).
KEYS = {
    "key-a": {
        "api_key": "sk-bench-a-000000000000",
        "provider": "openai",
        "models": {"gpt-4o-mini": {"rpm_limit": 60, "tpm_limit": 40_000}},
    },
    "key-b": {
        "api_key": "sk-bench-b-000000000000",
        "provider": "openai",
        "models": {"gpt-4o-mini": {"rpm_limit": 120, "tpm_limit": 90_000}},
    },
}

# (name, arguments): each a workload a user might simulate.
WORKLOADS = [
    ("an hour at 1 request/s", ["--requests", "3600", "--arrival", "rate:1", "--latency", "0.5"]),
    (
        "1,000 large requests at once (token-bound)",
        [
            "--requests",
            "1000",
            "--prompt-tokens",
            "4000-8000",
            "--completion-tokens",
            "1000",
        ],
    ),
    (
        "a day at 1 request/min",
        ["--requests", "1440", "--arrival", "rate:0.016667", "--latency", "2"],
    ),
    (
        "four hours at 1 request/s",
        ["--requests", "14400", "--arrival", "rate:1", "--latency", "0.5"],
    ),
]


def _run(keys: Path, args: list[str], backend: str) -> tuple[float, dict[str, object]]:
    command = [sys.executable, "-m", "maxllm_gate.cli", "simulate", "--keys-config", str(keys)]
    command += [*args, "--backend", backend, "--json"]
    start = time.perf_counter()
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, json.loads(out)


def _fewer(args: list[str], divisor: int) -> list[str]:
    """``args`` with ``--requests`` divided by ``divisor``."""
    at = args.index("--requests") + 1
    return [*args[:at], str(max(1, int(args[at]) // divisor)), *args[at + 1 :]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a run of seconds that checks the script works (tests/bench runs it)",
    )
    args = parser.parse_args()
    workloads = WORKLOADS
    if args.smoke:  # one run of each workload, with a fiftieth of its requests
        args.runs = 1
        workloads = [(name, _fewer(workload, 50)) for name, workload in WORKLOADS]
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.json"
        keys.write_text(json.dumps(KEYS))
        start_up = min(_run(keys, ["--requests", "1"], args.backend)[0] for _ in range(args.runs))
        print(f"{args.backend}: start-up (1 request) {start_up:.2f} s wall")
        print(f"{'workload':44s} {'requests':>8s} {'span':>9s} {'wall':>7s} {'per request':>12s}")
        for name, workload in workloads:
            runs = [_run(keys, workload, args.backend) for _ in range(args.runs)]
            wall = min(seconds for seconds, _ in runs)
            report = runs[0][1]
            requests = int(str(report["requests"]))
            span = float(str(report["makespan"]))
            per_request = (wall - start_up) / requests * 1e6
            print(
                f"{name:44s} {requests:8d} {span / 3600:7.2f} h {wall:5.2f} s {per_request:8.0f} µs"
            )


if __name__ == "__main__":
    main()
