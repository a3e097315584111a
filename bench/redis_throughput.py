"""How many requests per second one Redis admits and settles, as processes are added.

Starts its own ``redis-server``, then for each count in ``--processes`` that many
worker processes (this file with ``--worker``). Each worker drives a
``RedisState`` directly, with ``--concurrency`` tasks in a loop over ``--keys``
keys with limits that never bind: per request, the two scripts a real request
costs (``reserve`` at admission, ``settle`` with a header report at the end).
No provider, no client around it: this measures Redis and the state layer.

It prints, per process count: requests per second (all workers), the round-trip
time of one script call (p50, p99), and the CPU Redis itself spent per request
(from ``INFO cpu``), whence the rate at which one Redis core would saturate.
On a machine with few cores the workers compete with Redis for CPU: the knee
then comes from the clients, and the Redis CPU per request says how far one
Redis would go with clients elsewhere.

    python bench/redis_throughput.py [--processes 1 2 4 8] [--seconds 5]
                                     [--concurrency 16] [--keys 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import anyio
from redis_processes import free_port, start_redis  # this folder: run as a script

from maxllm_gate.limits import Cost, LimitSpec
from maxllm_gate.providers.headers import RateLimitInfo
from maxllm_gate.state.base import Learn
from maxllm_gate.state.redis import RedisState

MODEL = "bench-model"
ROOMY = LimitSpec(rpm_limit=1e9, tpm_limit=1e12, rpm_capacity=1e9 / 60, tpm_capacity=1e12 / 60)
START_DELAY = 2.0  # seconds from launch to the common start: imports and connections


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    state = RedisState(args.redis_url, prefix="bench-throughput")
    keys = [f"key-{i}" for i in range(args.keys)]
    report = Learn(RateLimitInfo(remaining_requests=9e8, remaining_tokens=9e11), 0.1, 120, 1)
    samples: list[float] = []
    done = 0
    async with state:
        for key in keys:
            state.register(key, MODEL, ROOMY)
        await anyio.sleep(max(0.0, args.start_at - time.time()))
        deadline = time.perf_counter() + args.seconds

        async def loop(index: int) -> None:
            nonlocal done
            key = keys[index % len(keys)]
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await state.reserve(key, MODEL, Cost(requests=1, tokens=120))
                samples.append(time.perf_counter() - started)
                await state.settle(key, MODEL, [report])
                done += 1

        async with anyio.create_task_group() as tg:
            for index in range(args.concurrency):
                tg.start_soon(loop, index)
    samples.sort()
    return {"requests": done, "round_trips": samples[:: max(1, len(samples) // 2000)]}


def _redis_cpu(port: int) -> float:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "cpu"], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def _run(args: argparse.Namespace, port: int, processes: int) -> dict[str, Any]:
    start_at = time.time() + START_DELAY
    command = [sys.executable, __file__, "--worker", "--redis-url", f"redis://127.0.0.1:{port}"]
    command += ["--seconds", str(args.seconds), "--concurrency", str(args.concurrency)]
    command += ["--keys", str(args.keys), "--start-at", str(start_at), "--backend", args.backend]
    workers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = _redis_cpu(port)
    time.sleep(args.seconds)
    cpu_after = _redis_cpu(port)
    results = [json.loads(w.communicate()[0]) for w in workers]
    if any(w.returncode for w in workers):
        raise RuntimeError("a worker failed")
    requests = sum(r["requests"] for r in results)
    trips = sorted(t for r in results for t in r["round_trips"])
    cpu = cpu_after - cpu_before
    return {
        "processes": processes,
        "requests_per_second": requests / args.seconds,
        "round_trip_p50_us": statistics.median(trips) * 1e6,
        "round_trip_p99_us": trips[int(len(trips) * 0.99)] * 1e6,
        "redis_cpu_share": cpu / args.seconds,
        "redis_cpu_us_per_request": cpu / requests * 1e6 if requests else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--smoke", action="store_true", help="one short run: does it work")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(anyio.run(_worker, args, backend=args.backend)))
        return 0
    if args.smoke:
        args.processes, args.seconds = [1, 2], 0.5
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        redis = start_redis(port, workdir)
        try:
            rows = [_run(args, port, n) for n in args.processes]
        finally:
            redis.kill()
            redis.wait()
    print(
        f"{'processes':>9} {'requests/s':>11} {'RTT p50 us':>11} {'RTT p99 us':>11} "
        f"{'Redis CPU':>9} {'Redis us/req':>12}"
    )
    for row in rows:
        print(
            f"{row['processes']:>9} {row['requests_per_second']:>11.0f} "
            f"{row['round_trip_p50_us']:>11.0f} {row['round_trip_p99_us']:>11.0f} "
            f"{row['redis_cpu_share']:>9.0%} {row['redis_cpu_us_per_request']:>12.1f}"
        )
    busiest = max(rows, key=lambda row: row["requests_per_second"])
    per_request = busiest["redis_cpu_us_per_request"]
    if per_request:
        print(
            f"one Redis core saturates near {1e6 / per_request:,.0f} requests/s "
            f"({per_request:.1f} us of Redis CPU per request, 2 scripts)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
