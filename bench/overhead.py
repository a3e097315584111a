"""In-process overhead per request: the client, the dispatcher and a key actor
around a simulated provider that answers at once, under asyncio and trio.

    python bench/overhead.py [--requests 20000] [--concurrency 200]

Prints microseconds per request, of wall time and of this process's CPU time
(the CPU figure is steadier on a busy machine). Limits are set so high that
nothing waits: what is measured is the scheduler's own cost (validation, token
estimation, queueing, routing, reservation, reconciliation, reply).
"""

from __future__ import annotations

import argparse
import time

import anyio

from maxllm_gate import KeyConfig, SimulatedProvider, maxllm_gate

MODEL = "sim-model"


def _keys(count: int) -> list[KeyConfig]:
    return [
        KeyConfig(
            api_key=f"sk-bench-{i}",
            provider="openai",
            key_id=f"bench-{i}",
            models={MODEL: {"rpm_limit": 10**9, "tpm_limit": 10**12, "burst_seconds": 60}},
        )
        for i in range(count)
    ]


async def _run(requests: int, concurrency: int, keys: int) -> tuple[float, float]:
    provider = SimulatedProvider(latency=0.0, completion_tokens=8, enforce=False)
    async with maxllm_gate(keys=_keys(keys), provider=provider) as client:
        await client.chat(MODEL, "warm up", max_tokens=16)
        per_worker = requests // concurrency

        async def worker() -> None:
            for _ in range(per_worker):
                await client.chat(MODEL, "Say hello to the benchmark.", max_tokens=16)

        start, cpu_start = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    count = per_worker * concurrency
    return elapsed / count * 1e6, cpu / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a run of seconds that checks the script works (tests/bench runs it)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.concurrency = 400, 20
    for backend in ("asyncio", "trio"):
        wall, cpu = anyio.run(_run, args.requests, args.concurrency, args.keys, backend=backend)
        print(
            f"{backend:8s} {wall:6.1f} us/request wall, {cpu:6.1f} us CPU  "
            f"({args.requests} requests, concurrency {args.concurrency}, {args.keys} keys)"
        )


if __name__ == "__main__":
    main()
