"""Run one workload through one client and print the outcome as one JSON line.

``python bench/peers/runner.py CLIENT < spec.json``: ``CLIENT`` names a module of
this folder (``gate``, ``litellm_router``, ``naive_openai``, ``cookbook``), each
with an ``open_client(spec)`` async context manager that yields ``call(request)``.
The timing is the same for every client: each request is submitted at its ``at``
seconds after the common start, and its latency runs from its submission to its
answer (time spent waiting for capacity included). A request that raises is a
failure the caller saw; one still unanswered ``deadline`` seconds after the start
is counted as ``unfinished``.

This file imports only the standard library, so the same harness runs the peers
inside their own virtual environment and maxllm_gate inside the project's.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any


async def run(client: str, spec: dict[str, Any]) -> dict[str, Any]:
    module = importlib.import_module(client)
    requests = spec["requests"]
    latencies: list[float | None] = [None] * len(requests)
    failures: dict[str, int] = {}
    ends: list[float] = []
    setup = time.monotonic()
    async with module.open_client(spec) as call:
        setup = time.monotonic() - setup
        start = time.monotonic()
        deadline = start + spec["deadline"]

        async def one(index: int, request: dict[str, Any]) -> None:
            await asyncio.sleep(max(0.0, start + request["at"] - time.monotonic()))
            submitted = time.monotonic()
            try:
                await asyncio.wait_for(call(request), max(0.0, deadline - submitted))
            except asyncio.TimeoutError:
                failures["unfinished"] = failures.get("unfinished", 0) + 1
            except Exception as exc:  # every outcome is counted, by its type
                name = type(exc).__name__
                failures[name] = failures.get(name, 0) + 1
            else:
                latencies[index] = time.monotonic() - submitted
            ends.append(time.monotonic())

        cpu = time.process_time()
        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        cpu = time.process_time() - cpu
        makespan = max(ends) - start
    return {
        "makespan": makespan,
        "latencies": latencies,
        "priorities": [r.get("priority", "medium") for r in requests],
        "failures": failures,
        "setup_seconds": setup,
        "cpu_seconds": cpu,
        "versions": getattr(module, "versions", dict)(),
    }


def main() -> None:
    client = sys.argv[1]
    spec = json.load(sys.stdin)
    sys.path.insert(0, str(Path(__file__).parent))
    result = asyncio.run(run(client, spec))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
