"""Embeddings under the same limits: a burst of embedding requests over real HTTP.

    python bench/embeddings.py [--requests 2000] [--backend asyncio|trio]
                               [--transport openai_compat|litellm] [--smoke]

Sends ``--requests`` embedding requests at once (each 1 to 16 chunks of 20 to
200 words) through ``client.embed()`` over 3 keys to the fake provider in its
own process (``maxllm_gate.testing.fake_provider``), strict: each bucket holds 1 s
of its limit, as OpenAI enforces. The provider charges each request its input
(characters / 4), by its own code, never the client's.

Prints the 429s the provider answered, the caller's failures, and the
efficiency: the bound (``makespan_bound`` of what the provider itself debited,
under its limits, plus one call's latency) over the makespan. The issue's
check: 0 429s and an efficiency of at least 0.95. ``--smoke`` sends 60 requests
and checks only that each gets its vectors (its numbers mean little: a burst
that short on a busy machine may even draw a 429, which the client waits out).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

import anyio
import httpx

MODEL = "text-embedding-3-small"
LATENCY = 0.2
DIMENSIONS = 8  # short vectors: the bench measures scheduling, not JSON of floats
# (rpm, tpm) of the 3 keys: TPM-bound, as embedding jobs are.
KEYS = ((1_000, 500_000), (2_000, 1_000_000), (4_000, 2_500_000))
WORDS = ["index", "chunk", "search", "vector", "document", "the", "of", "a"]


def api_key(index: int) -> str:
    return f"sk-embeddings-bench-{index:03d}"


def workload(requests: int, seed: int = 21) -> list[list[str]]:
    rng = random.Random(seed)
    return [
        [" ".join(rng.choices(WORDS, k=rng.randint(20, 200))) for _ in range(rng.randint(1, 16))]
        for _ in range(requests)
    ]


async def burst(url: str, inputs: list[list[str]], transport: str) -> dict[str, Any]:
    from maxllm_gate import GateError, KeyConfig, maxllm_gate

    keys = [
        KeyConfig(
            api_key=api_key(i),
            provider="openai",
            key_id=f"key-{i}",
            api_base=url,
            transport=transport,
            models={MODEL: {"rpm_limit": rpm, "tpm_limit": tpm}},
        )
        for i, (rpm, tpm) in enumerate(KEYS)
    ]
    failures: dict[str, int] = {}
    vectors = 0
    async with maxllm_gate(keys=keys) as client:
        started = anyio.current_time()

        async def one(texts: list[str]) -> None:
            nonlocal vectors
            try:
                response = await client.embed(MODEL, texts, dimensions=DIMENSIONS)
            except GateError as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return
            vectors += len(response.vectors)

        async with anyio.create_task_group() as tg:
            for texts in inputs:
                tg.start_soon(one, texts)
        makespan = anyio.current_time() - started
    return {"makespan": makespan, "failures": failures, "vectors": vectors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument(
        "--transport", choices=["openai_compat", "litellm"], default="openai_compat"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="60 requests: checks the script works (tests/bench)"
    )
    args = parser.parse_args()
    from maxllm_gate.limits import LimitSpec, makespan_bound
    from maxllm_gate.testing.fake_provider import fake_provider_process

    requests = 60 if args.smoke else args.requests
    inputs = workload(requests)
    limits = {api_key(i): {MODEL: [rpm, tpm]} for i, (rpm, tpm) in enumerate(KEYS)}
    fake_args = ["--limits", json.dumps(limits), "--burst-window", "1", "--latency", str(LATENCY)]
    with fake_provider_process(*fake_args) as url:
        wall = time.monotonic()
        result = anyio.run(burst, url, inputs, args.transport, backend=args.backend)
        wall = time.monotonic() - wall
        stats = httpx.get(url.removesuffix("/v1") + "/stats").json()
    debited = sum(s["charged_tokens"] for s in stats.values())
    specs = [LimitSpec.from_limits(rpm, tpm, 1.0) for rpm, tpm in KEYS]
    done = requests - sum(result["failures"].values())
    bound = makespan_bound(done, debited, specs) + LATENCY
    row = {
        "requests": requests,
        "inputs": sum(len(texts) for texts in inputs),
        "backend": args.backend,
        "transport": args.transport,
        "failed": sum(result["failures"].values()),
        "provider_429s": sum(s["rate_limited"] for s in stats.values()),
        "debited_tokens": debited,
        "makespan": round(result["makespan"], 2),
        "bound": round(bound, 2),
        "efficiency": round(bound / result["makespan"], 3),
        "wall": round(wall, 1),
    }
    row["met"] = (
        row["failed"] == 0
        and result["vectors"] == row["inputs"]
        and (args.smoke or (row["provider_429s"] == 0 and row["efficiency"] >= 0.95))
    )
    print(json.dumps(row), flush=True)
    sys.exit(0 if row["met"] else 1)


if __name__ == "__main__":
    main()
