"""The latency Redis adds to each request, on loopback.

Sends ``--requests`` requests one after another (no queueing, so no deferral)
through a client over the in-process simulated provider with no latency: once
with memory state and once with Redis state (its own ``redis-server`` on a free
port). The difference is what sharing the limits costs a request: its Redis
round trips (``reserve``, then ``learn`` and ``release`` at settlement, which the
caller waits for only as far as they happen before the answer is handed over).

    python bench/redis_latency.py [--requests 2000] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from typing import Any

import anyio
from redis_processes import free_port, start_redis  # this folder: run as a script

from maxllm_gate import KeyConfig, SimulatedProvider, maxllm_gate
from maxllm_gate.state.hybrid import HybridRateLimiter

MODEL = "sim-model"


async def measure(requests: int, redis_url: str | None) -> dict[str, Any]:
    key = KeyConfig(
        api_key="sk-bench-latency-0000",
        provider="openai",
        key_id="bench",
        models={MODEL: {"rpm_limit": 10_000_000, "tpm_limit": 10_000_000_000}},
    )
    provider = SimulatedProvider(latency=0.0, completion_tokens=5)
    client = maxllm_gate(keys=[key], provider=provider, redis_url=redis_url)
    times: list[float] = []
    async with client:
        if redis_url is not None:
            state = client._state
            assert isinstance(state, HybridRateLimiter) and state.is_distributed
        for _ in range(50):  # warm up
            await client.chat(MODEL, "Hello there!", max_tokens=16)
        for _ in range(requests):
            start = time.perf_counter()
            await client.chat(MODEL, "Hello there!", max_tokens=16)
            times.append(time.perf_counter() - start)
        calls = dict(client._state.redis.calls) if redis_url is not None else {}
    times.sort()
    return {
        "mean_us": statistics.fmean(times) * 1e6,
        "p50_us": times[len(times) // 2] * 1e6,
        "p99_us": times[int(len(times) * 0.99)] * 1e6,
        "round_trips_per_request": sum(calls.values()) / (requests + 50) if calls else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a run of seconds that checks the script works (tests/bench runs it)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.requests = 50
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on the PATH")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        redis = start_redis(port, workdir)
        try:
            memory = anyio.run(measure, args.requests, None, backend=args.backend)
            shared = anyio.run(
                measure, args.requests, f"redis://127.0.0.1:{port}", backend=args.backend
            )
        finally:
            redis.kill()
            redis.wait()
    print(f"backend={args.backend} requests={args.requests} (sequential, loopback Redis)")
    for name, r in (("memory", memory), ("redis", shared)):
        print(
            f"  {name:7s} mean {r['mean_us']:7.0f} us  p50 {r['p50_us']:7.0f} us  "
            f"p99 {r['p99_us']:7.0f} us  round trips/request {r['round_trips_per_request']:.2f}"
        )
    print(
        f"  added by Redis: mean {shared['mean_us'] - memory['mean_us']:.0f} us, "
        f"p50 {shared['p50_us'] - memory['p50_us']:.0f} us, "
        f"p99 {shared['p99_us'] - memory['p99_us']:.0f} us"
    )


if __name__ == "__main__":
    main()
