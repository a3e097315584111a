"""Several OS processes sharing two keys' limits through Redis, against the fake provider.

Runs its own ``redis-server`` and fake provider, then ``--processes`` workers (this
file with ``--worker``), each with one client over both keys and ``redis_url``,
submitting all its ``--requests`` at once. Prints each worker's JSON line and a
summary; exits non-zero if any request failed.

    python bench/redis_processes.py [--processes 4] [--requests 300]
                                    [--backend asyncio|trio] [--kill-redis] [--json PATH]
                                    [--cluster] [--kill-master]

With ``--kill-redis`` the Redis server is killed a few seconds in and restarted on
the same port ~3 s later: the workers fall back to per-process (memory) limits in
the meantime, so some 429s are expected then; they are reported, not hidden.

With ``--cluster`` it starts a 3-master Redis Cluster instead (``redis-server
--cluster-enabled yes``, joined by ``redis-cli --cluster create``), and the
workers' URL names the node that holds neither key's slot. ``--kill-master``
(implies ``--cluster``) kills the master holding the first key's slot a few
seconds in, and restarts it on the same port, with its cluster state, ~3 s later.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

MODEL = "fake-model"
# Two keys; 4 x 300 requests of ~50 tokens need ~24 s at the bound (both dimensions).
LIMITS = {"alpha": (1500, 75_000), "beta": (1500, 75_000)}
BURST_WINDOW = 1.0
LATENCY = 0.2
MAX_TOKENS = 40
START_DELAY = 3.0  # seconds from launch to the common start, for imports and connections
KILL_AFTER = 4.0  # seconds after the common start
DOWN_FOR = 3.0


def api_key(name: str) -> str:
    return f"sk-fake-{name}-0000"


def workload(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(["word"] * rng.randint(3, 15)) for _ in range(count)]


def work_tokens(prompts: list[str]) -> float:
    from maxllm_gate.tokens import TokenEstimator

    est = TokenEstimator()
    return sum(
        est.count_prompt(MODEL, [{"role": "user", "content": p}]) + MAX_TOKENS for p in prompts
    )


# -- worker ------------------------------------------------------------------------------


async def _worker_main(args: argparse.Namespace) -> dict[str, Any]:
    import anyio

    from maxllm_gate import KeyConfig, maxllm_gate

    configs = [
        KeyConfig(
            api_key=api_key(name),
            provider="openai",
            key_id=name,
            api_base=args.provider_url,
            transport="openai_compat",
            models={MODEL: {"rpm_limit": rpm, "tpm_limit": tpm}},
        )
        for name, (rpm, tpm) in LIMITS.items()
    ]
    prompts = workload(args.index, args.requests)
    client = maxllm_gate(keys=configs, redis_url=args.redis_url, admission_margin=args.margin)
    successes = 0
    failures: collections.Counter[str] = collections.Counter()
    attempts: collections.Counter[int] = collections.Counter()
    transitions: list[tuple[float, bool]] = []
    state: Any = client._state

    async def one(prompt: str) -> None:
        nonlocal successes
        try:
            response = await client.chat(MODEL, prompt, max_tokens=MAX_TOKENS)
        except Exception as exc:  # every outcome is counted
            failures[type(exc).__name__] += 1
        else:
            successes += 1
            attempts[response.attempts] += 1

    async with client:
        distributed_at_start = bool(state.is_distributed)
        await anyio.sleep(max(0.0, args.start_at - time.time()))
        start = time.monotonic()

        async def watch() -> None:
            last = state.is_distributed
            while True:
                await anyio.sleep(0.05)
                now = state.is_distributed
                if now != last:
                    transitions.append((round(time.monotonic() - start, 2), bool(now)))
                    last = now

        async with anyio.create_task_group() as outer:
            outer.start_soon(watch)
            async with anyio.create_task_group() as tg:
                for prompt in prompts:
                    tg.start_soon(one, prompt)
            makespan = time.monotonic() - start
            outer.cancel_scope.cancel()
        distributed_at_end = bool(state.is_distributed)
        cluster = state.redis.is_cluster
        calls = dict(state.redis.calls)
        answered_locally = state.redis.answered_locally
    return {
        "index": args.index,
        "requests": len(prompts),
        "successes": successes,
        "failures": dict(failures),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "makespan": round(makespan, 3),
        "redis_calls": calls,
        "redis_round_trips": sum(calls.values()),
        "answered_locally": answered_locally,
        "distributed_at_start": distributed_at_start,
        "distributed_at_end": distributed_at_end,
        "distributed_transitions": transitions,
        "cluster": cluster,
    }


def run_worker(args: argparse.Namespace) -> int:
    import logging

    import anyio

    # The library logs through `logging` and prints nothing itself: the coordinator
    # reads the Redis warnings from each worker's stderr.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    result = anyio.run(_worker_main, args, backend=args.backend)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- coordinator -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(
    port: int, workdir: str, *, cluster_port: int | None = None
) -> subprocess.Popen[bytes]:
    """A redis-server on ``port``; with ``cluster_port``, a Cluster node keeping its
    cluster state in ``workdir`` (so a restart rejoins as the same node)."""
    command = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    if cluster_port is not None:
        command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        command += ["--cluster-port", str(cluster_port), "--cluster-node-timeout", "5000"]
    proc = subprocess.Popen(
        command,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")


class Cluster:
    """Three redis-server masters on free ports, joined into one Redis Cluster."""

    def __init__(self, workdir: str) -> None:
        self.ports = [free_port() for _ in range(3)]
        # The bus port defaults to port + 10000, which a free port may not have.
        self.bus_ports = [free_port() for _ in range(3)]
        self.dirs = [str(Path(workdir) / f"node{i}") for i in range(3)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * 3

    def start(self) -> None:
        for index in range(3):
            Path(self.dirs[index]).mkdir(parents=True, exist_ok=True)
            self.start_node(index)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0"]
        subprocess.run(
            [*create, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    def start_node(self, index: int) -> None:
        self.procs[index] = start_redis(
            self.ports[index], self.dirs[index], cluster_port=self.bus_ports[index]
        )

    def wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while b"cluster_state:ok" not in self.cli(port, "cluster", "info"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.05)

    def cli(self, port: int, *command: str) -> bytes:
        return subprocess.run(
            ["redis-cli", "-p", str(port), *command], capture_output=True, timeout=10
        ).stdout

    def holder_of(self, key: str) -> int:
        """The index of the master holding ``key``'s slot (from CLUSTER NODES)."""
        slot = int(self.cli(self.ports[0], "cluster", "keyslot", key))
        for index, port in enumerate(self.ports):
            mine = next(
                ln for ln in self.cli(port, "cluster", "nodes").split(b"\n") if b"myself" in ln
            )
            for part in mine.split()[8:]:
                low, _, high = part.decode().partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return index
        raise RuntimeError(f"no master holds slot {slot}")

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)


def provider_process() -> contextlib.AbstractContextManager[str]:
    from maxllm_gate.testing.fake_provider import fake_provider_process

    limits = {api_key(n): {MODEL: list(rates)} for n, rates in LIMITS.items()}
    return fake_provider_process(
        "--limits",
        json.dumps(limits),
        "--burst-window",
        str(BURST_WINDOW),
        "--latency",
        str(LATENCY),
        "--completion-tokens",
        "10",
    )


def stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def measure_round_trip(redis_url: str, n: int = 300, cluster: bool = False) -> dict[str, float]:
    """Mean seconds of a PING (every primary, on a Cluster) and of an EVALSHA of a
    trivial script, sequentially."""
    import anyio
    import coredis

    async def main() -> dict[str, float]:
        client: coredis.Redis[str] | coredis.RedisCluster[str]
        if cluster:
            with warnings.catch_warnings():  # coredis 6.9 warns about its own from_url
                warnings.simplefilter("ignore", DeprecationWarning)
                client = coredis.RedisCluster.from_url(redis_url, decode_responses=True)
        else:
            client = coredis.Redis.from_url(redis_url, decode_responses=True)
        async with client:
            script = client.register_script("redis.call('HGET', KEYS[1], 'x') return {1, ARGV[1]}")
            for _ in range(20):  # warm up
                await client.ping()
                await script(keys=["bench:rt"], args=["1"])
            t0 = time.perf_counter()
            for _ in range(n):
                await client.ping()
            t1 = time.perf_counter()
            for _ in range(n):
                await script(keys=["bench:rt"], args=["1"])
            t2 = time.perf_counter()
        return {"ping": (t1 - t0) / n, "evalsha": (t2 - t1) / n}

    return anyio.run(main)


def stop_now(proc: subprocess.Popen[Any] | None) -> None:
    """SIGKILL: as abrupt as a crash."""
    if proc is not None:
        proc.kill()
        proc.wait(timeout=5)


def provider_stats(url: str) -> dict[str, Any]:
    import httpx

    return dict(httpx.get(url.removesuffix("/v1") + "/stats", timeout=10).json())


def run_coordinator(args: argparse.Namespace) -> int:
    from maxllm_gate.limits import LimitSpec, makespan_bound

    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    port = free_port()
    cluster = Cluster(workdir) if args.cluster else None
    redis_url = f"redis://127.0.0.1:{cluster.ports[1] if cluster else port}"
    redis: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[str]] = []
    stderr_files: list[Any] = []
    results: list[dict[str, Any]] = []
    worker_errors: list[str] = []
    kill_log: list[str] = []
    kill_times: dict[str, float] = {}
    hung: list[int] = []
    holders: dict[str, int] = {}  # key -> port of the master holding its slot
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` runs
    try:
        if cluster is None:
            redis = start_redis(port, workdir)
        else:
            cluster.start()
            victim = cluster.holder_of(next(iter(LIMITS)))
            holders = {key: cluster.ports[cluster.holder_of(key)] for key in LIMITS}
        with provider_process() as url:
            start_at = time.time() + START_DELAY
            for index in range(args.processes):
                err = open(Path(workdir) / f"worker{index}.err", "w+")  # noqa: SIM115
                stderr_files.append(err)
                workers.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            __file__,
                            "--worker",
                            "--index",
                            str(index),
                            "--requests",
                            str(args.requests),
                            "--backend",
                            args.backend,
                            "--provider-url",
                            url,
                            "--redis-url",
                            redis_url,
                            "--start-at",
                            repr(start_at),
                            "--margin",
                            repr(args.margin),
                        ],
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                    )
                )
            if args.kill_redis:
                time.sleep(max(0.0, start_at + KILL_AFTER - time.time()))
                redis.kill()
                # The kill's moment, not the reaping's: under load wait() can lag by
                # most of a second, while the workers see the server gone at once.
                kill_times["killed_at"] = time.time() - start_at
                redis.wait(timeout=5)
                kill_log.append(f"redis killed at t={kill_times['killed_at']:.2f}s")
                time.sleep(DOWN_FOR)
                redis = start_redis(port, workdir)
                kill_times["restarted_at"] = time.time() - start_at
                kill_log.append(f"redis restarted at t={kill_times['restarted_at']:.2f}s")
            if cluster is not None and args.kill_master:
                time.sleep(max(0.0, start_at + KILL_AFTER - time.time()))
                stop_now(cluster.procs[victim])
                kill_times["killed_at"] = time.time() - start_at
                kill_log.append(
                    f"master {victim} (port {cluster.ports[victim]}, holding "
                    f"{next(iter(LIMITS))!r}) killed at t={kill_times['killed_at']:.2f}s"
                )
                time.sleep(DOWN_FOR)
                cluster.start_node(victim)
                kill_times["restarted_at"] = time.time() - start_at
                kill_log.append(f"master {victim} restarted at t={kill_times['restarted_at']:.2f}s")
            deadline = start_at + args.worker_timeout
            for index, proc in enumerate(workers):
                try:
                    out, _ = proc.communicate(timeout=max(1.0, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    stop(proc)
                    out = ""
                    hung.append(index)
                lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    stderr_files[index].seek(0)
                    tail = stderr_files[index].read()[-2000:]
                    worker_errors.append(f"worker {index} rc={proc.returncode}: {tail}")
                    continue
                results.append(json.loads(lines[-1].removeprefix("RESULT ")))
            stats = provider_stats(url)
        rt = measure_round_trip(redis_url, cluster=cluster is not None)
    finally:
        for proc in workers:
            stop(proc)
        stop(redis)
        if cluster is not None:
            cluster.stop()
        for f in stderr_files:
            f.close()

    warnings = collections.Counter[str]()
    for index in range(args.processes):
        text = (Path(workdir) / f"worker{index}.err").read_text()
        for line in text.splitlines():
            if "Redis unreachable" in line:
                warnings["fell back to memory"] += 1
            elif "Redis is back" in line:
                warnings["back on Redis"] += 1
    shutil.rmtree(workdir, ignore_errors=True)

    for r in results:
        print(json.dumps(r))
    total = args.processes * args.requests
    successes = sum(r["successes"] for r in results)
    failures: collections.Counter[str] = collections.Counter()
    attempts: collections.Counter[str] = collections.Counter()
    for r in results:
        failures.update(r["failures"])
        attempts.update(r["attempts"])
    missing = total - successes - sum(failures.values())
    # What the provider's own limiter debited: the work the limits bound (our estimate
    # of it, the fallback, is the client's count, not the provider's).
    charged = sum(s.get("charged_tokens", 0) for s in stats.values())
    work = charged or sum(work_tokens(workload(i, args.requests)) for i in range(args.processes))
    specs = [LimitSpec.from_limits(rpm, tpm, BURST_WINDOW) for rpm, tpm in LIMITS.values()]
    bound = makespan_bound(total, work, specs) + LATENCY
    makespan = max((r["makespan"] for r in results), default=float("nan"))
    round_trips = sum(r["redis_round_trips"] for r in results)
    by_op: collections.Counter[str] = collections.Counter()
    for r in results:
        by_op.update(r["redis_calls"])

    print("=== summary ===")
    print(
        f"backend={args.backend} processes={args.processes} requests/process={args.requests} "
        f"kill_redis={args.kill_redis} cluster={args.cluster} kill_master={args.kill_master}"
    )
    if cluster is not None:
        print(
            f"cluster masters: {cluster.ports}, workers' URL: {redis_url}, key slots held by "
            + ", ".join(f"{k}: {p}" for k, p in holders.items())
            + "; detected as a cluster by the workers: "
            + str([r["cluster"] for r in results])
        )
    for line in kill_log:
        print(line)
    print(
        f"requests: {total}  successes: {successes}  failures: {sum(failures.values())} "
        f"{dict(failures)}  without a result: {missing}"
    )
    print(f"attempts histogram: {dict(sorted(attempts.items(), key=lambda kv: int(kv[0])))}")
    print(
        f"provider: calls={sum(s['calls'] for s in stats.values())} "
        f"accepted={sum(s['accepted'] for s in stats.values())} "
        f"rate_limited={sum(s['rate_limited'] for s in stats.values())}"
    )
    print(
        f"makespan (max over workers): {makespan:.2f}s  bound+latency: {bound:.2f}s  "
        f"efficiency: {bound / makespan:.1%}  (work: {work:.0f} tokens)"
    )
    print(
        "distributed at start/end: "
        + ", ".join(
            f"w{r['index']}={r['distributed_at_start']}/{r['distributed_at_end']}" for r in results
        )
    )
    if args.kill_redis or args.kill_master:
        print(
            "distributed transitions (t, is_distributed): "
            + "; ".join(
                f"w{r['index']}={r['distributed_transitions']} (done at {r['makespan']:.1f}s)"
                for r in results
            )
        )
        print(f"worker log lines: {dict(warnings)}")
    print(
        f"redis round trips: {round_trips} ({round_trips / total:.2f}/request) {dict(by_op)}; "
        f"answered locally: {sum(r['answered_locally'] for r in results)}"
    )
    print(
        f"redis round trip (sequential, this host): PING {rt['ping'] * 1e6:.0f} us, "
        f"EVALSHA {rt['evalsha'] * 1e6:.0f} us -> ~{rt['evalsha'] * round_trips / total * 1e3:.2f}"
        " ms of Redis per request"
    )
    if hung:
        print(f"HUNG workers (killed after --worker-timeout): {hung}")
    for e in worker_errors:
        print("WORKER ERROR:", e)
    failed = bool(failures) or missing != 0 or bool(worker_errors)
    if args.json:
        summary = {
            "backend": args.backend,
            "requests": total,
            "successes": successes,
            "failures": dict(failures),
            "without_result": missing,
            "worker_errors": worker_errors,
            "hung": hung,
            "provider_calls": sum(s["calls"] for s in stats.values()),
            "provider_rate_limited": sum(s["rate_limited"] for s in stats.values()),
            "makespan": makespan,
            "bound": bound,
            "round_trips_per_request": round_trips / total,
            "cluster": args.cluster,
            "kill_master": args.kill_master,
            "key_holders": holders,
            "redis_url": redis_url,
            "workers": results,
            **kill_times,
        }
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--kill-redis", action="store_true")
    parser.add_argument("--cluster", action="store_true", help="a 3-master Redis Cluster")
    parser.add_argument(
        "--kill-master", action="store_true", help="kill a Cluster master mid-run (--cluster)"
    )
    parser.add_argument(
        "--margin", type=float, default=0.05, help="admission_margin (ADMISSION_MARGIN), seconds"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
    parser.add_argument(
        "--worker-timeout", type=float, default=120.0, help="seconds before a worker is hung"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--provider-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a run of seconds that checks the script works (tests/bench runs it)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.processes, args.requests = 2, 30
    args.cluster = args.cluster or args.kill_master
    if args.cluster and args.kill_redis:
        parser.error("--kill-redis kills the single server: use --kill-master with --cluster")
    return run_worker(args) if args.worker else run_coordinator(args)


if __name__ == "__main__":
    sys.exit(main())
