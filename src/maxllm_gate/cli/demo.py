"""``maxllm_gate demo``: the product at work in a moment, offline, with no keys.

It pushes a few hundred requests through three simulated keys with different
limits, as a batch with the live progress display, and reports what the
provider saw (no 429s) and how close the run came to the theoretical bound. By
default it runs on virtual time (trio's ``MockClock``), so a minute of
rate-limited traffic takes a moment; ``--real-time`` runs on the wall clock.
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

import anyio

from maxllm_gate.batch import Batch
from maxllm_gate.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    describe,
    print_error,
)
from maxllm_gate.cli.progress import show_progress
from maxllm_gate.cli.run import add_display_options
from maxllm_gate.client import maxllm_gate
from maxllm_gate.config import KeyConfig
from maxllm_gate.limits import LimitSpec, makespan_bound
from maxllm_gate.providers.simulated import SimulatedProvider
from maxllm_gate.testing.virtual_time import run_virtual

__all__ = ["add_parser"]

_MODEL = "sim-llama-70b"
_DEMO_KEYS = {"key-small": (60, 20_000), "key-medium": (120, 40_000), "key-large": (300, 90_000)}


def add_parser(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run offline against a simulated provider (no keys needed)",
        description=describe(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=300, help="how many (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="the workload's random seed")
    parser.add_argument(
        "--real-time", action="store_true", help="run on the wall clock instead of virtual time"
    )
    add_display_options(parser)
    parser.set_defaults(func=run_demo)


async def _demo(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    workload = [
        ("Summarise: " + " ".join(["lorem"] * rng.randint(20, 300)), rng.choice([64, 128, 256]))
        for _ in range(args.requests)
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
    requests = [
        {"model": _MODEL, "messages": prompt, "max_tokens": max_tokens}
        for prompt, max_tokens in workload
    ]
    async with maxllm_gate(keys=keys, provider=provider, strategy="least_utilized") as client:
        batch = Batch(client, requests, concurrency=max(1, len(requests)))
        async with show_progress(
            batch, len(requests), mode=args.progress, interval=args.progress_interval
        ):
            stats = await batch.run()
        status = client.status()

    # The bound on what the provider itself debited: its accounting, not ours.
    tokens = sum(s.charged_tokens for s in provider.stats.values())
    specs = [LimitSpec.from_limits(rpm, tpm, 1.0) for rpm, tpm in _DEMO_KEYS.values()]
    bound = makespan_bound(len(workload), tokens, specs)
    makespan = stats.elapsed
    return {
        "requests": len(workload),
        "failed": stats.failed,
        "provider_429s": provider.rate_limited,
        "makespan": round(makespan, 3),
        "bound": round(bound, 3),
        "efficiency": round(bound / makespan, 3) if makespan > 0 and bound > 0 else None,
        "keys": {
            key_id: {
                "requests": info["successes"],
                "rpm_limit": _DEMO_KEYS[key_id][0],
                "tpm_limit": _DEMO_KEYS[key_id][1],
            }
            for key_id, info in status["keys"].items()
        },
        "virtual_time": not args.real_time,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        "maxllm_gate demo: simulated provider, 3 keys, quantized (1 s) enforcement",
        f"requests        {report['requests']} ({report['failed']} failed)",
        f"provider 429s   {report['provider_429s']}",
        f"makespan        {report['makespan']:.1f} s",
        f"bound           {report['bound']:.1f} s (the limits allow no faster)",
    ]
    if report["efficiency"] is None:
        lines.append("efficiency      - (the requests fit in the keys' first burst)")
    else:
        lines.append(f"efficiency      {report['efficiency']:.3f}")
    for key_id, info in report["keys"].items():
        lines.append(
            f"  {key_id:11s} {info['requests']:5d} requests  "
            f"({info['rpm_limit']} RPM, {info['tpm_limit']} TPM)"
        )
    return "\n".join(lines)


def run_demo(args: argparse.Namespace) -> int:
    if args.requests < 1:
        print_error("--requests must be at least 1")
        return EXIT_USAGE
    report = anyio.run(_demo, args) if args.real_time else run_virtual(_demo, args)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return EXIT_FAILED if report["failed"] or report["provider_429s"] else EXIT_OK
