"""Soak: 100,000 requests through the simulated provider under random faults, on
virtual time, checking that memory stays flat and that no task leaks.

    python bench/soak.py [--requests 100000] [--backend asyncio|trio|both] [--seed 1]

Five keys serve a stream of requests from 400 concurrent callers, in ten rounds.
A chaos task injects, at random moments: 5xx bursts, 429 storms with
``retry-after``, hung calls (cut by ``call_timeout``), a key revoked and replaced
by a new one, lower real limits than configured, and crashes of the state
backend (the actors restart). Some callers give up (``timeout=``) or cancel.

After every round it reports what the process holds: its resident memory
(``/proc/self/statm``, after ``gc.collect()``), the number of tasks alive (the
trio task tree, or ``asyncio.all_tasks()``), how many of them are call runners
the key actors keep idle for reuse, and the client's queue, calls in
flight and outstanding requests (all zero between rounds). At the end, every
request's one outcome: answered, a clear error (by type), or cancelled by its
caller; the provider's own 429s; and how many requests it saw more than once.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

from maxllm_gate import (
    GateError,
    KeyConfig,
    RateLimitError,
    SimulatedProvider,
    TransientError,
    maxllm_gate,
)
from maxllm_gate.providers.base import ProviderCall
from maxllm_gate.state import MemoryState
from maxllm_gate.state.base import Correction
from maxllm_gate.testing import virtual_time_backend

MODEL = "sim-model"
ROUNDS = 10
CALLERS = 400


def rss_mib() -> float:
    """This process's resident set size, in MiB."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def open_tasks() -> int:
    """Tasks alive in this event loop."""
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

        return count(trio.lowlevel.current_root_task())
    import asyncio

    return len(asyncio.all_tasks())


def _key(i: int, rpm: int = 6_000, tpm: int = 600_000) -> KeyConfig:
    return KeyConfig(
        api_key=f"sk-soak-{i:04d}-0123456789",
        provider="openai",
        key_id=f"soak-{i}",
        models={MODEL: {"rpm_limit": rpm, "tpm_limit": tpm}},
    )


class CrashingState(MemoryState):
    """A state backend that sometimes fails while settling a call: the actor crashes."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng
        self.crash_rate = 0.0

    async def settle(self, key_id: str, model: str, corrections: Sequence[Correction]) -> None:
        if self.crash_rate and self.rng.random() < self.crash_rate:
            self.crash_rate = 0.0  # one crash per injection
            raise RuntimeError("soak: injected state failure")
        await super().settle(key_id, model, corrections)


async def soak(requests: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)

    def latency(call: ProviderCall) -> float:
        return rng.uniform(0.2, 2.0)

    provider = SimulatedProvider(
        latency=latency, completion_tokens=lambda call: rng.randint(5, 60), burst_window=1.0
    )
    state = CrashingState(rng)
    keys = [_key(i) for i in range(5)]
    next_key = len(keys)
    outcomes: collections.Counter[str] = collections.Counter()
    faults: collections.Counter[str] = collections.Counter()
    duplicates = 0
    rounds: list[dict[str, Any]] = []
    per_round = requests // ROUNDS

    async with maxllm_gate(
        keys=keys, provider=provider, state=state, call_timeout=20.0, retry_base_delay=0.5
    ) as client:

        async def one(i: int) -> None:
            prompt = f"soak request {i}: " + "word " * rng.randint(1, 80)
            kwargs: dict[str, Any] = {
                "max_tokens": rng.choice([16, 64, 256]),
                "priority": rng.choice(["high", "medium", "low"]),
            }
            if rng.random() < 0.05:
                kwargs["timeout"] = rng.uniform(0.5, 5.0)  # gives up: RequestTimeoutError
            give_up = rng.uniform(0.1, 10.0) if rng.random() < 0.03 else float("inf")
            with anyio.move_on_after(give_up) as scope:
                try:
                    if rng.random() < 0.05:
                        text = [d async for d in client.chat_stream(MODEL, prompt, **kwargs)]
                        assert text
                    else:
                        await client.chat(MODEL, prompt, **kwargs)
                    outcomes["answered"] += 1
                except GateError as exc:
                    outcomes[type(exc).__name__] += 1
            if scope.cancelled_caught:
                outcomes["cancelled by caller"] += 1

        async def caller(todo: collections.deque[int]) -> None:
            while todo:
                await one(todo.popleft())

        async def chaos() -> None:
            nonlocal next_key
            while True:
                await anyio.sleep(rng.expovariate(1 / 5.0))  # a fault every 5 s on average
                kind = rng.choice(["5xx", "429", "hang", "revoke", "lower", "crash"])
                faults[kind] += 1
                live = [k for k, a in client._dispatcher.actors.items() if a.disabled is None]
                target = rng.choice(live)
                if kind == "5xx":
                    error = TransientError("soak: server error", status_code=rng.choice([500, 503]))
                    provider.inject(error, times=rng.randint(1, 20))
                elif kind == "429":
                    error = RateLimitError("soak: slow down", status_code=429, retry_after=2.0)
                    provider.inject(error, times=rng.randint(1, 20), key_id=target)
                elif kind == "hang":
                    provider.hang(times=rng.randint(1, 3))
                elif kind == "revoke":
                    provider.revoke(target)
                    await client.add_key(_key(next_key))
                    next_key += 1
                elif kind == "lower":
                    provider._limits[target] = {MODEL: (3_000, 300_000)}
                    provider._buckets.pop((target, MODEL), None)
                elif kind == "crash":
                    state.crash_rate = 0.01

        async with anyio.create_task_group() as chaos_group:
            chaos_group.start_soon(chaos)
            for number in range(ROUNDS):
                todo = collections.deque(range(number * per_round, (number + 1) * per_round))
                started = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for _ in range(CALLERS):
                        tg.start_soon(caller, todo)
                await anyio.sleep(0.5)  # let abandoned calls settle in their actors
                duplicates += provider.duplicates
                provider.sends.clear()
                gc.collect()
                status = client.status()
                rounds.append(
                    {
                        "round": number + 1,
                        "done": (number + 1) * per_round,
                        "rss_mib": rss_mib(),
                        "tasks": open_tasks(),
                        "actors": len(client._dispatcher.actors),
                        "idle": sum(a.idle_runners for a in client._dispatcher.actors.values()),
                        "queued": status["queued"],
                        "in_flight": status["in_flight"],
                        "outstanding": status["outstanding"],
                        "wall_s": time.perf_counter() - started,
                        "virtual_s": anyio.current_time(),
                    }
                )
            chaos_group.cancel_scope.cancel()
        restarts = client._supervisor.restarts
    return {
        "rounds": rounds,
        "outcomes": dict(outcomes),
        "faults": dict(faults),
        "restarts": restarts,
        "provider_429s": provider.rate_limited,
        "sent_more_than_once": duplicates,
        "requests": per_round * ROUNDS,
    }


def report(backend: str, result: dict[str, Any]) -> bool:
    rounds = result["rounds"]
    print(f"\n== {backend}: {result['requests']:,} requests")
    print(
        " round    done  rss MiB  tasks  idle  keys  queued  in flight  outstanding"
        "  wall s  virtual s"
    )
    for r in rounds:
        print(
            f" {r['round']:>5} {r['done']:>7,} {r['rss_mib']:>8.1f} {r['tasks']:>6} {r['idle']:>5} "
            f"{r['actors']:>5} {r['queued']:>7} {r['in_flight']:>10} {r['outstanding']:>12} "
            f"{r['wall_s']:>7.1f} {r['virtual_s']:>10.0f}"
        )
    first, middle, last = rounds[0], rounds[len(rounds) // 2 - 1], rounds[-1]
    print(
        f" RSS start/middle/end: {first['rss_mib']:.1f} / {middle['rss_mib']:.1f} / "
        f"{last['rss_mib']:.1f} MiB; tasks {first['tasks']} / {middle['tasks']} / {last['tasks']}"
    )
    print(f" outcomes: {result['outcomes']}")
    print(f" faults injected: {result['faults']}; actor restarts: {result['restarts']}")
    print(
        f" provider 429s: {result['provider_429s']}; requests the provider saw more than "
        f"once: {result['sent_more_than_once']} (after an error answer, a hang or a crash)"
    )
    ended = sum(result["outcomes"].values())
    settled = all(r["queued"] == r["in_flight"] == r["outstanding"] == 0 for r in rounds)
    # One task per key actor (a revoked key's actor stays, disabled), plus the call
    # runners each keeps idle for reuse (at most 256 a key, and they retire after 30 s
    # idle); nothing else grows.
    flat_tasks = len({r["tasks"] - r["actors"] - r["idle"] for r in rounds}) == 1
    flat_tasks = flat_tasks and all(r["idle"] <= 256 * r["actors"] for r in rounds)
    ok = ended == result["requests"] and settled and flat_tasks
    print(
        f" every request ended once: {ended == result['requests']}; settled between rounds: "
        f"{settled}; task count flat: {flat_tasks}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a run of seconds that checks the script works (tests/bench runs it)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.requests = 2_000
    from maxllm_gate._logging import configure_logging

    configure_logging("CRITICAL")  # the faults are the point: keep their warnings quiet
    ok = True
    for backend in ["asyncio", "trio"] if args.backend == "both" else [args.backend]:
        name, options = virtual_time_backend(backend)
        result = anyio.run(soak, args.requests, args.seed, backend=name, backend_options=options)
        ok = report(backend, result) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
