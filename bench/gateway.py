"""The gateway's cost: added latency, and sustained requests per second, on this machine.

    python bench/gateway.py [--transports native,litellm] [--workers asyncio,trio]
                            [--seconds 8] [--concurrency 32] [--latency-requests 400]

Starts the fake provider in its own process (no limits, no latency), then for
each transport and worker class a ``maxllm_gate-server`` process in front of it.
A lean HTTP/1.1 load generator (raw asyncio streams, keep-alive; about a tenth
of httpx's CPU per request, so that it takes little of the two cores) measures:

- latency at concurrency 1, calling the fake provider directly and through the
  gateway; the difference of the percentiles is what the gateway adds. On a
  busy machine much of it is time the gateway and the fake spent ready to run
  but waiting for a CPU (from /proc/PID/schedstat), reported per request;
- sustained throughput at ``--concurrency`` connections for ``--seconds``
  (after a warm-up), with each process's CPU time per request, from /proc:
  where the time goes.

All three processes share the machine's cores, as they would on one host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from maxllm_gate.testing.fake_provider import fake_provider_process

TOKEN = "bench-token"
API_KEY = "sk-bench-gateway"
MODEL = "gpt-4o-mini"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
).encode()
_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"connection:\s*close", re.IGNORECASE)
_TICK = os.sysconf("SC_CLK_TCK")


def _request(host: str, path: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {TOKEN}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\n\r\n"
    )
    return head.encode() + BODY


async def _connection(
    host: str, port: int, request: bytes, stop_at: float, latencies: list[float], count: int
) -> int:
    """Send ``request`` back to back on one connection (a new one when the server
    closes it, as hypercorn does after 1,000 requests); returns the non-200 answers."""
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    try:
        while time.perf_counter() < stop_at and count:
            count -= 1
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(head)
            await reader.readexactly(int(length[1]) if length else 0)
            latencies.append(time.perf_counter() - start)
            errors += head[9:12] != b"200"
            if _CLOSE.search(head):
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()
    return errors


def _load(
    url: str, path: str, concurrency: int, seconds: float, count: int = -1
) -> dict[str, float]:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    request = _request(host, path)
    latencies: list[float] = []

    async def run() -> int:
        stop_at = time.perf_counter() + seconds
        per = -1 if count < 0 else max(1, count // concurrency)
        results = await asyncio.gather(
            *(
                _connection(host, int(port), request, stop_at, latencies, per)
                for _ in range(concurrency)
            )
        )
        return sum(results)

    wall, cpu = time.perf_counter(), time.process_time()
    errors = asyncio.run(run())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "errors": errors,
        "rps": len(ordered) / wall,
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
        "loadgen_cpu_ms": cpu / max(1, len(ordered)) * 1000,
    }


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _runqueue_seconds(pid: int) -> float:
    """Time the process's main thread spent ready to run but waiting for a CPU
    (from /proc: the cost of other load on the machine)."""
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[1]) / 1e9


def _fake_pid() -> int:
    # The fake runs as `python -m maxllm_gate.testing.fake_provider`: our only child of that name.
    out = subprocess.run(
        ["pgrep", "-P", str(os.getpid()), "-f", "maxllm_gate.testing.fake_provider"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0])


@contextmanager
def _gateway(
    fake_url: str, transport: str, worker: str, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    keys = {
        "bench": {
            "api_key": API_KEY,
            "provider": "openai",
            "api_base": fake_url,
            "transport": "openai_compat" if transport == "native" else "litellm",
            "models": {MODEL: {"rpm_limit": 10_000_000, "tpm_limit": 10_000_000_000}},
        }
    }
    with gateway_process(keys, port, worker, MAX_QUEUE_SIZE="100000") as process:
        yield process


@contextmanager
def gateway_process(
    keys: dict[str, Any], port: int, worker: str = "asyncio", **settings: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``maxllm_gate-server`` on 127.0.0.1:``port`` with ``keys`` (API_KEYS_CONFIG) and
    the bench's gateway token, once it answers /health; terminated on exit."""
    env = {
        **os.environ,
        "API_KEYS_CONFIG": json.dumps(keys),
        "GATEWAY_API_KEYS": TOKEN,
        "LOG_LEVEL": "WARNING",
        **settings,
    }
    command = [sys.executable, "-m", "maxllm_gate.gateway.server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--worker-class", worker, "--env-file", ""]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the gateway did not start") from None
                time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--transports", default="native,litellm")
    parser.add_argument("--workers", default="asyncio,trio")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=400)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a run of seconds that checks the script works (tests/bench runs it)",
    )
    args = parser.parse_args()
    warm_up = 2.0
    if args.smoke:
        args.transports, args.seconds, args.concurrency = "native", 0.5, 8
        args.latency_requests, warm_up = 20, 0.3

    rows = []
    with fake_provider_process("--completion-tokens", "16") as fake_url:
        fake = _fake_pid()
        _load(fake_url, "/v1/chat/completions", 1, warm_up, 200)
        direct = _load(fake_url, "/v1/chat/completions", 1, 60.0, args.latency_requests)
        before = _cpu_seconds(fake)
        direct_load = _load(fake_url, "/v1/chat/completions", args.concurrency, args.seconds)
        fake_cpu = (_cpu_seconds(fake) - before) / direct_load["requests"] * 1000
        print(
            f"fake provider alone: p50 {direct['p50_ms']:.2f} ms, p99 {direct['p99_ms']:.2f} ms "
            f"(concurrency 1); {direct_load['rps']:.0f} req/s at concurrency "
            f"{args.concurrency}, {fake_cpu:.2f} ms CPU/req",
            flush=True,
        )
        for transport in args.transports.split(","):
            for worker in args.workers.split(","):
                port = _free_port()
                with _gateway(fake_url, transport, worker, port) as process:
                    url = f"http://127.0.0.1:{port}"
                    _load(url, "/v1/chat/completions", args.concurrency, warm_up)
                    waited = _runqueue_seconds(process.pid) + _runqueue_seconds(fake)
                    latency = _load(url, "/v1/chat/completions", 1, 60.0, args.latency_requests)
                    waited = _runqueue_seconds(process.pid) + _runqueue_seconds(fake) - waited
                    cpu = {"gateway": _cpu_seconds(process.pid), "fake": _cpu_seconds(fake)}
                    load = _load(url, "/v1/chat/completions", args.concurrency, args.seconds)
                    n = load["requests"]
                    gateway_cpu = (_cpu_seconds(process.pid) - cpu["gateway"]) / n * 1000
                    fake_cpu = (_cpu_seconds(fake) - cpu["fake"]) / n * 1000
                row = {
                    "transport": transport,
                    "worker": worker,
                    "p50_ms": latency["p50_ms"],
                    "p99_ms": latency["p99_ms"],
                    "added_p50_ms": latency["p50_ms"] - direct["p50_ms"],
                    "added_p99_ms": latency["p99_ms"] - direct["p99_ms"],
                    "cpu_wait_ms": waited / latency["requests"] * 1000,
                    "rps": load["rps"],
                    "errors": load["errors"] + latency["errors"],
                    "load_p50_ms": load["p50_ms"],
                    "gateway_cpu_ms": gateway_cpu,
                    "fake_cpu_ms": fake_cpu,
                    "loadgen_cpu_ms": load["loadgen_cpu_ms"],
                }
                rows.append(row)
                print(
                    json.dumps(
                        {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
                    ),
                    flush=True,
                )

    print()
    print(
        f"| transport | worker | added p50 | added p99 | waiting for a CPU (c=1) "
        f"| req/s (c={args.concurrency}) | gateway CPU/req | fake CPU/req | load CPU/req | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['transport']} | {r['worker']} | {r['added_p50_ms']:.2f} ms | "
            f"{r['added_p99_ms']:.2f} ms | {r['cpu_wait_ms']:.2f} ms | {r['rps']:.0f} | "
            f"{r['gateway_cpu_ms']:.2f} ms | "
            f"{r['fake_cpu_ms']:.2f} ms | {r['loadgen_cpu_ms']:.2f} ms | {r['errors']} |"
        )
    if args.smoke and any(r["errors"] for r in rows):
        sys.exit("requests failed")


if __name__ == "__main__":
    main()
