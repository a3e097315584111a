"""2,000 embedding requests at once over 3 keys on a strict provider, on virtual time."""

from __future__ import annotations

import random

import anyio
import pytest

from maxllm_gate import SimulatedProvider, maxllm_gate
from maxllm_gate.limits import LimitSpec, makespan_bound
from tests.support import make_key

MODEL = "text-embedding-3-small"
# Embedding limits are TPM-heavy: a request holds many chunks of a document.
LIMITS = {"small": (500, 200_000), "medium": (1_000, 400_000), "large": (3_000, 1_000_000)}
LATENCY = 0.3


@pytest.mark.anyio
async def test_2000_embedding_requests_meet_the_bound_with_no_429() -> None:
    rng = random.Random(21)
    words = ["index", "chunk", "search", "vector", "document", "the", "of", "a"]
    requests = [
        [" ".join(rng.choices(words, k=rng.randint(20, 200))) for _ in range(rng.randint(1, 16))]
        for _ in range(2_000)
    ]
    provider = SimulatedProvider(latency=LATENCY, burst_window=1.0)
    keys = [make_key(name, rpm, tpm, model=MODEL) for name, (rpm, tpm) in LIMITS.items()]
    answered: dict[int, int] = {}

    async with maxllm_gate(keys=keys, provider=provider) as client:
        start = anyio.current_time()

        async def one(i: int, texts: list[str]) -> None:
            response = await client.embed(MODEL, texts, dimensions=8)
            assert i not in answered
            answered[i] = len(response.vectors)

        async with anyio.create_task_group() as tg:
            for i, texts in enumerate(requests):
                tg.start_soon(one, i, texts)
        makespan = anyio.current_time() - start

    # What the provider debited, by its own accounting: the inputs only.
    work = sum(stats.charged_tokens for stats in provider.stats.values())
    specs = [LimitSpec.from_limits(rpm, tpm, burst_seconds=1.0) for rpm, tpm in LIMITS.values()]
    bound = makespan_bound(len(requests), work, specs) + LATENCY

    assert provider.rate_limited == 0
    assert provider.accepted == len(requests) == len(answered)
    assert all(answered[i] == len(texts) for i, texts in enumerate(requests))
    assert bound / makespan >= 0.95, (makespan, bound)
    print(f"makespan {makespan:.2f}s, bound {bound:.2f}s, efficiency {bound / makespan:.4f}")
