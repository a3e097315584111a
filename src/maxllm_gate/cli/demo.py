"""The ``maxllm_gate`` command.

``maxllm_gate demo`` pushes a few hundred requests through three simulated
keys with different limits, offline and with no keys, and reports what the
provider saw (no 429s) and how close the run came to the theoretical bound.
By default it runs on virtual time (trio's ``MockClock``), so minutes of
rate-limited traffic take a moment; ``--real-time`` runs on the wall clock.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence

import anyio

from maxllm_gate.client import maxllm_gate
from maxllm_gate.config import KeyConfig
from maxllm_gate.limits import LimitSpec, makespan_bound
from maxllm_gate.providers.simulated import SimulatedProvider
from maxllm_gate.tokens import TokenEstimator

__all__ = ["main"]

_MODEL = "sim-llama-70b"
_DEMO_KEYS = {"key-small": (60, 20_000), "key-medium": (120, 40_000), "key-large": (300, 90_000)}


async def _demo(requests: int, seed: int, out: list[str]) -> None:
    rng = random.Random(seed)
    workload = [
        ("Summarise: " + " ".join(["lorem"] * rng.randint(20, 300)), rng.choice([64, 128, 256]))
        for _ in range(requests)
    ]
    keys = [
        KeyConfig(
            api_key=f"sk-demo-{name}",
            provider="openai",
            key_id=name,
            models={_MODEL: {"rpm_limit": rpm, "tpm_limit": tpm}},
        )
        for name, (rpm, tpm) in _DEMO_KEYS.items()
    ]
    provider = SimulatedProvider(
        latency=lambda call: 0.4 + rng.random() * 0.8, completion_tokens=48, burst_window=1.0
    )
    failures = 0
    async with maxllm_gate(keys=keys, provider=provider, strategy="least_utilized") as client:
        start = anyio.current_time()

        async def one(prompt: str, max_tokens: int) -> None:
            nonlocal failures
            try:
                await client.chat(_MODEL, prompt, max_tokens=max_tokens)
            except Exception:
                failures += 1

        async with anyio.create_task_group() as tg:
            for prompt, max_tokens in workload:
                tg.start_soon(one, prompt, max_tokens)
        makespan = anyio.current_time() - start
        status = client.status()

    count = TokenEstimator()
    tokens = sum(
        count.count_prompt(_MODEL, [{"role": "user", "content": p}]) + m for p, m in workload
    )
    specs = [LimitSpec.from_limits(rpm, tpm, 1.0) for rpm, tpm in _DEMO_KEYS.values()]
    bound = makespan_bound(len(workload), tokens, specs)
    out.append(f"requests        {len(workload)} ({failures} failed)")
    out.append(f"provider 429s   {provider.rate_limited}")
    out.append(f"makespan        {makespan:.1f} s")
    out.append(f"bound           {bound:.1f} s (the limits allow no faster)")
    out.append(f"efficiency      {bound / makespan:.3f}")
    for key_id, info in status["keys"].items():
        rpm, tpm = _DEMO_KEYS[key_id]
        out.append(f"  {key_id:11s} {info['successes']:5d} requests  ({rpm} RPM, {tpm} TPM)")


def _run_demo(args: argparse.Namespace) -> int:
    lines: list[str] = []
    if args.real_time:
        anyio.run(_demo, args.requests, args.seed, lines)
    else:
        import trio.testing

        clock = trio.testing.MockClock(autojump_threshold=0)
        anyio.run(
            _demo,
            args.requests,
            args.seed,
            lines,
            backend="trio",
            backend_options={"clock": clock},
        )
    print("maxllm_gate demo: simulated provider, 3 keys, quantized (1 s) enforcement")
    print("\n".join(lines))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maxllm_gate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run offline against a simulated provider")
    demo.add_argument("--requests", type=int, default=300)
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument(
        "--real-time", action="store_true", help="run on the wall clock instead of virtual time"
    )
    demo.set_defaults(func=_run_demo)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
