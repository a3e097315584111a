"""10,000 requests at once over 3 keys with different limits, on virtual time."""

from __future__ import annotations

import random

import anyio
import pytest

from maxllm_gate import SimulatedProvider, maxllm_gate
from maxllm_gate.tokens import TokenEstimator
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

    # What the provider charges: the true prompt plus max_tokens, at admission.
    true_count = TokenEstimator(buffer=1.0)
    work = sum(
        true_count.estimate_prompt(MODEL, [{"role": "user", "content": p}]) + m for p, m in requests
    )
    tpm = sum(t for _, t in LIMITS.values())
    rpm = sum(r for r, _ in LIMITS.values())
    burst_tokens = sum(t / 60 for _, t in LIMITS.values())
    burst_requests = sum(r / 60 for r, _ in LIMITS.values())
    bound = max((work - burst_tokens) / (tpm / 60), (len(requests) - burst_requests) / (rpm / 60))
    bound += LATENCY

    assert provider.rate_limited == 0
    assert len(answers) == len(requests)
    assert provider.accepted == len(requests)
    assert bound * 0.99 <= makespan <= bound * 1.05, (makespan, bound)
    used = {name: sum(1 for k in answers.values() if k == name) for name in LIMITS}
    assert used["small"] < used["medium"] < used["large"]
