"""Run one workload through one client and print the outcome as one JSON line.

``python bench/peers/runner.py CLIENT < spec.json``: ``CLIENT`` names a module of
this folder (``gate``, ``litellm_router``, ``naive_openai``, ``cookbook``), each
with an ``open_client(spec)`` async context manager that yields ``call(request)``.
The timing is the same for every client: each request is submitted at its ``at``
seconds after the common start, and its latency runs from its submission to its
answer (time spent waiting for capacity included). A request that raises is a
failure the caller saw; one still unanswered ``deadline`` seconds after the start
is counted as ``unfinished``. ``spec["backend"]`` may be ``"trio"`` (the default
is asyncio).

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
    sleep, within, all_of = _event_loop(spec.get("backend", "asyncio"))
    latencies: list[float | None] = [None] * len(requests)
    failures: dict[str, int] = {}
    ends: list[float] = []
    setup = time.monotonic()
    async with module.open_client(spec) as call:
        setup = time.monotonic() - setup
        start = time.monotonic()
        deadline = start + spec["deadline"]

        async def one(index: int, request: dict[str, Any]) -> None:
            await sleep(max(0.0, start + request["at"] - time.monotonic()))
            submitted = time.monotonic()
            try:
                answered = await within(call(request), max(0.0, deadline - submitted))
            except Exception as exc:  # every outcome is counted, by its type
                name = type(exc).__name__
                failures[name] = failures.get(name, 0) + 1
            else:
                if answered:
                    latencies[index] = time.monotonic() - submitted
                else:
                    failures["unfinished"] = failures.get("unfinished", 0) + 1
            ends.append(time.monotonic())

        cpu = time.process_time()
        await all_of([one(i, r) for i, r in enumerate(requests)])
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


def _event_loop(backend: str) -> tuple[Any, Any, Any]:
    """``sleep``, ``within(coroutine, seconds)`` (False if it ran out of time) and
    ``all_of(coroutines)`` for ``backend``. Trio is imported only when asked for: the
    peers' environments have none."""
    if backend == "trio":
        import trio

        async def trio_within(coroutine: Any, seconds: float) -> bool:
            with trio.move_on_after(seconds) as scope:
                await coroutine
            return not scope.cancelled_caught

        async def trio_all_of(coroutines: list[Any]) -> None:
            async def wait(coroutine: Any) -> None:
                await coroutine

            async with trio.open_nursery() as nursery:
                for coroutine in coroutines:
                    nursery.start_soon(wait, coroutine)

        return trio.sleep, trio_within, trio_all_of

    async def asyncio_within(coroutine: Any, seconds: float) -> bool:
        try:
            await asyncio.wait_for(coroutine, seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def asyncio_all_of(coroutines: list[Any]) -> None:
        await asyncio.gather(*coroutines)

    return asyncio.sleep, asyncio_within, asyncio_all_of


def main() -> None:
    client = sys.argv[1]
    spec = json.load(sys.stdin)
    sys.path.insert(0, str(Path(__file__).parent))
    if spec.get("backend") == "trio":
        import trio

        result = trio.run(run, client, spec)
    else:
        result = asyncio.run(run(client, spec))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
