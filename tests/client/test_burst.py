"""10,000 requests at once over 3 keys with different limits, on virtual time."""

from __future__ import annotations

import functools
import random

import anyio
import pytest

from maxllm_gate import SimulatedProvider, maxllm_gate
from maxllm_gate.limits import LimitSpec, makespan_bound
from tests.support import MODEL, make_key

LIMITS = {"small": (600, 40_000), "medium": (1_200, 90_000), "large": (3_000, 150_000)}
LATENCY = 0.5


@pytest.mark.anyio
async def test_a_burst_of_10000_requests_meets_the_theoretical_bound_with_no_429() -> None:
    rng = random.Random(7)
    requests = [
        (" ".join(["word"] * rng.randint(5, 60)), rng.choice([50, 100, 200])) for _ in range(10_000)
    ]
    provider = SimulatedProvider(latency=LATENCY, completion_tokens=40, burst_window=1.0)
    keys = [make_key(name, rpm, tpm) for name, (rpm, tpm) in LIMITS.items()]
    answers: dict[int, str] = {}

    async with maxllm_gate(keys=keys, provider=provider) as client:
        start = anyio.current_time()

        async def one(i: int, prompt: str, max_tokens: int) -> None:
            response = await client.chat(MODEL, prompt, max_tokens=max_tokens)
            assert i not in answers
            answers[i] = response.key_used

        async with anyio.create_task_group() as tg:
            for i, (prompt, max_tokens) in enumerate(requests):
                tg.start_soon(one, i, prompt, max_tokens)
        makespan = anyio.current_time() - start

    # What the provider debited, by its own accounting.
    work = sum(stats.charged_tokens for stats in provider.stats.values())
    specs = [LimitSpec.from_limits(rpm, tpm, burst_seconds=1.0) for rpm, tpm in LIMITS.values()]
    bound = makespan_bound(len(requests), work, specs) + LATENCY

    assert provider.rate_limited == 0
    assert len(answers) == len(requests)
    assert provider.accepted == len(requests)
    assert bound * 0.99 <= makespan <= bound * 1.05, (makespan, bound)
    used = {name: sum(1 for k in answers.values() if k == name) for name in LIMITS}
    assert used["small"] < used["medium"] < used["large"]


@pytest.mark.anyio
async def test_prompts_larger_than_the_bucket_with_a_safety_buffer_cause_no_429() -> None:
    """Requests bigger than a 1 s bucket are admitted only when it is full; the
    buffer's over-reservation must not be given back once the provider's bucket
    has overflowed (see GcraCell.release)."""
    rng = random.Random(1)
    provider = SimulatedProvider(
        latency=lambda call: 0.4 + rng.random() * 0.8, completion_tokens=48, burst_window=1.0
    )
    keys = [make_key("small", 60, 20_000), make_key("large", 300, 90_000)]
    client = maxllm_gate(keys=keys, provider=provider)
    async with client, anyio.create_task_group() as tg:
        for _ in range(300):
            prompt = " ".join(["lorem"] * rng.randint(20, 300))
            tg.start_soon(functools.partial(client.chat, MODEL, prompt, max_tokens=256))
    assert provider.rate_limited == 0
    assert provider.accepted == 300


@pytest.mark.anyio
async def test_a_provider_with_a_minute_of_burst_is_learned_from_its_headers() -> None:
    """The gate starts with a 1 s bucket; the provider's headers show it holds a
    full minute, and the gate uses that burst instead of trickling at the refill rate."""
    provider = SimulatedProvider(latency=0.5, completion_tokens=20, burst_window=60.0)
    key = make_key("k1", 6_000, 60_000)
    prompts = [f"question number {i}" for i in range(1_200)]
    client = maxllm_gate(keys=[key], provider=provider)
    async with client, anyio.create_task_group() as tg:
        start = anyio.current_time()
        for prompt in prompts:
            tg.start_soon(functools.partial(client.chat, MODEL, prompt, max_tokens=50))
    makespan = anyio.current_time() - start
    work = sum(stats.charged_tokens for stats in provider.stats.values())
    learned = LimitSpec.from_limits(6_000, 60_000, burst_seconds=60.0)
    bound = makespan_bound(len(prompts), work, [learned]) + LATENCY
    without_learning = makespan_bound(
        len(prompts), work, [learned.__class__.from_limits(6_000, 60_000, burst_seconds=1.0)]
    )
    assert provider.rate_limited == 0
    # Without learning it would take 4x longer.
    assert makespan <= bound * 1.05, (makespan, bound)
    assert makespan < without_learning / 3
