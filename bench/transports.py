"""Per-call cost of the transports over real HTTP, against a raw httpx post.

    python bench/transports.py [--calls 2000] [--concurrency 16]

Starts the fake provider (maxllm_gate.testing.fake_provider) in another process,
with no limits and no latency, then, under asyncio and trio, makes the same calls
with: a raw ``httpx.AsyncClient.post``; the client over the native OpenAI-compatible
transport; the client over LiteLLM. Prints this process's CPU time and the wall
time per call: the server's own cost is not counted in the CPU figure.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import anyio
import httpx

from maxllm_gate import KeyConfig, maxllm_gate
from maxllm_gate.testing.fake_provider import fake_provider_process

API_KEY = "sk-bench-transports"
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]


async def _measure(calls: int, concurrency: int, one: Callable[[], Awaitable[object]]) -> str:
    await one()  # warm up: connections, imports
    per_worker = max(1, calls // concurrency)

    async def worker() -> None:
        for _ in range(per_worker):
            await one()

    wall, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    count = per_worker * concurrency
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return f"{cpu / count * 1e6:8.0f} us CPU {wall / count * 1e6:8.0f} us wall"


async def _raw(url: str, calls: int, concurrency: int) -> str:
    async with httpx.AsyncClient(base_url=url) as http:
        headers = {"authorization": f"Bearer {API_KEY}"}
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}

        async def one() -> object:
            response = await http.post("/chat/completions", json=body, headers=headers)
            return response.json()

        return await _measure(calls, concurrency, one)


async def _client(url: str, transport: str, calls: int, concurrency: int) -> str:
    key = KeyConfig(
        api_key=API_KEY,
        provider="openai",
        api_base=url,
        transport=transport,
        models={MODEL: {"rpm_limit": 10**9, "tpm_limit": 10**12, "burst_seconds": 60}},
    )
    async with maxllm_gate(keys=[key]) as client:

        async def one() -> object:
            return await client.chat(MODEL, MESSAGES, max_tokens=16)

        return await _measure(calls, concurrency, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a run of seconds that checks the script works (tests/bench runs it)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.calls, args.concurrency = 64, 4
    with fake_provider_process("--completion-tokens", "8") as url:
        for backend in ("asyncio", "trio"):
            rows = {
                "raw httpx post": anyio.run(
                    _raw, url, args.calls, args.concurrency, backend=backend
                ),
                "openai_compat": anyio.run(
                    _client, url, "openai_compat", args.calls, args.concurrency, backend=backend
                ),
                "litellm": anyio.run(
                    _client, url, "litellm", args.calls // 4, args.concurrency, backend=backend
                ),
            }
            for name, result in rows.items():
                print(f"{backend:8s} {name:15s} {result}")


if __name__ == "__main__":
    main()
