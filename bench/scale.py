"""How the scheduler scales: a deep queue, many keys, and the dispatcher's pace.

    python bench/scale.py [--queued 100000] [--keys 1000] [--requests 20000]
                          [--routing-requests 4000] [--backend asyncio|trio]

Three measurements, in process, against ``SimulatedProvider``:

- **memory per queued request**: ``--queued`` callers wait in ``chat()`` behind a
  key that has no room; ``tracemalloc`` measures what the queue holds, per
  request, with each caller's task counted (what a waiting request really costs
  an application) and without (the scheduler's own share: job, reply channel,
  queue entry).
- **routing cost per request with many keys**: ``bench/overhead.py``'s loop (a
  provider that answers at once, limits that never bind) with ``--keys`` keys and
  with 3; the difference is what choosing among the keys costs.
- **dispatcher decisions per second**: ``--requests`` requests queue behind a
  full key; then a key with room is added, and the time until the queue is empty
  is measured. Each decision is one admission: pick a key with the strategy,
  reserve both buckets, hand the job to the key's actor. Calls never answer in
  this window, so nothing else competes.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import anyio

from maxllm_gate import KeyConfig, SimulatedProvider, maxllm_gate

sys.path.insert(0, str(Path(__file__).parent))
from overhead import _run as overhead_run

MODEL = "sim-model"
PROMPT = "Say hello to the benchmark."


def _key(name: str, rpm: float, tpm: float) -> KeyConfig:
    return KeyConfig(
        api_key=f"sk-scale-{name}",
        provider="openai",
        key_id=name,
        models={MODEL: {"rpm_limit": rpm, "tpm_limit": tpm, "burst_seconds": 60}},
    )


async def _wait_queued(client: maxllm_gate, count: int) -> None:
    # An observer outside the scheduler: polling is fine here, never in the library.
    dispatcher = client._dispatcher
    while dispatcher.queued < count:  # noqa: ASYNC110
        await anyio.sleep(0.01)


async def memory_per_queued(queued: int) -> dict[str, float]:
    """Bytes per waiting request: with its caller's task, and the scheduler's share."""
    # One request a minute: after the first, everything waits.
    keys = [_key("slow", 1, 10**9)]
    provider = SimulatedProvider(latency=0.0, enforce=False)
    async with maxllm_gate(keys=keys, provider=provider, max_queue_size=queued + 10) as client:
        await client.chat(MODEL, PROMPT, max_tokens=16)  # warm up (this takes the one slot)
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        async with anyio.create_task_group() as tg:
            for _ in range(queued):
                tg.start_soon(client.chat, MODEL, PROMPT)
            await _wait_queued(client, queued)
            gc.collect()
            with_tasks = tracemalloc.get_traced_memory()[0] - base
            tg.cancel_scope.cancel()
        tracemalloc.stop()
        # The scheduler's share alone: jobs submitted without a waiting task each.
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        jobs = [
            await client._submit(MODEL, PROMPT, None, None, None, True, False, None, {})
            for _ in range(queued)
        ]
        gc.collect()
        alone = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        for job in jobs:
            job.abandon()
        await client.shutdown(0)
    return {"with_task": with_tasks / queued, "scheduler": alone / queued}


async def decisions_per_second(requests: int) -> dict[str, float]:
    """Admissions per second, draining a queue of ``requests`` onto a key with room."""
    provider = SimulatedProvider(latency=10**6, enforce=False)
    settings: dict[str, Any] = {"max_queue_size": requests + 10}
    async with maxllm_gate(keys=[_key("full", 1, 10**9)], provider=provider, **settings) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.chat, MODEL, PROMPT)  # takes the full key's only slot
            await anyio.sleep(0.05)
            for _ in range(requests):
                tg.start_soon(client.chat, MODEL, PROMPT)
            await _wait_queued(client, requests)
            start = time.perf_counter()
            cpu = time.process_time()
            await client.add_key(_key("roomy", 10**9, 10**12))
            dispatcher = client._dispatcher
            while dispatcher.queued:  # noqa: ASYNC110
                await anyio.sleep(0.005)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() - cpu
            tg.cancel_scope.cancel()
        await client.shutdown(0)
    return {"per_second": requests / elapsed, "cpu_us": cpu / requests * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--routing-requests", type=int, default=4_000, help="with --keys keys")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a run of seconds that checks the script works (tests/bench runs it)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.queued, args.keys, args.requests, args.routing_requests = 2_000, 50, 500, 200
    backend = args.backend

    memory = anyio.run(memory_per_queued, args.queued, backend=backend)
    print(
        f"{backend}: {args.queued} requests queued: {memory['with_task'] / 1024:.2f} KiB per "
        f"request with its waiting caller task, {memory['scheduler'] / 1024:.2f} KiB of it "
        "the scheduler's (job, reply channel, queue entry)"
    )

    few_wall, few_cpu = anyio.run(overhead_run, args.requests, 200, 3, backend=backend)
    many_wall, many_cpu = anyio.run(
        overhead_run, args.routing_requests, 200, args.keys, backend=backend
    )
    print(
        f"{backend}: per request, 3 keys: {few_wall:.1f} us wall / {few_cpu:.1f} us CPU; "
        f"{args.keys} keys: {many_wall:.1f} us wall / {many_cpu:.1f} us CPU; routing among "
        f"{args.keys} keys costs {many_cpu - few_cpu:+.1f} us CPU per request "
        f"({args.requests} and {args.routing_requests} requests, 200 concurrent)"
    )

    pace = anyio.run(decisions_per_second, args.requests, backend=backend)
    print(
        f"{backend}: dispatcher: {pace['per_second']:,.0f} decisions/s draining "
        f"{args.requests} queued requests onto a key with room "
        f"({pace['cpu_us']:.1f} us CPU per decision, the call tasks' start included)"
    )


if __name__ == "__main__":
    main()
