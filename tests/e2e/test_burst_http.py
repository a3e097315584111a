"""Bursts over real HTTP: three keys behind the fake provider, on the real clock.

Each workload needs about 20 s of the keys' sustained capacity, so these are the
slowest tests of the suite: they run once per backend and burst window.
"""

from __future__ import annotations

import functools
import json
import random
from typing import Any

import anyio
import httpx
import pytest

from maxllm_gate import KeyConfig, maxllm_gate
from maxllm_gate.limits import LimitSpec, makespan_bound
from maxllm_gate.providers.openai_compat import OpenAICompatProvider
from maxllm_gate.testing.fake_provider import fake_provider_process
from maxllm_gate.tokens import TokenEstimator

MODEL = "fake-model"
LIMITS = {"small": (120, 6_000), "medium": (240, 12_000), "large": (480, 24_000)}
LATENCY = 0.2


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)  # real sockets want the real clock


def _workload(seed: int, total_tokens: float, sizes: list[int]) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    count = TokenEstimator()
    out: list[tuple[str, int]] = []
    used = 0.0
    while used < total_tokens:
        prompt = " ".join(["word"] * rng.randint(5, 40))
        max_tokens = rng.choice(sizes)
        out.append((prompt, max_tokens))
        used += count.count_prompt(MODEL, [{"role": "user", "content": prompt}]) + max_tokens
    return out


async def _run(burst_window: float) -> dict[str, Any]:
    sustained = sum(t for _, t in LIMITS.values()) / 60.0  # tokens per second
    burst = sustained * burst_window
    # A minute of burst is spent in few, larger requests: a few hundred at once is what
    # one HTTP client can push through on two cores.
    sizes = [20, 40, 60] if burst_window <= 1 else [150, 250, 350]
    workload = _workload(3, total_tokens=sustained * 20 + burst, sizes=sizes)
    keys = {name: f"sk-fake-{name}-0000" for name in LIMITS}
    limits = {keys[n]: {MODEL: list(rates)} for n, rates in LIMITS.items()}
    # The provider runs in its own process, as a real one does: its event loop is not
    # ours, so our own bursts of work do not delay its admissions.
    with fake_provider_process(
        "--limits",
        json.dumps(limits),
        "--burst-window",
        str(burst_window),
        "--latency",
        str(LATENCY),
        "--completion-tokens",
        "10",
    ) as url:
        configs = [
            KeyConfig(
                api_key=keys[name],
                provider="openai",
                key_id=name,
                api_base=url,
                models={MODEL: {"rpm_limit": rpm, "tpm_limit": tpm}},
            )
            for name, (rpm, tpm) in LIMITS.items()
        ]
        client = maxllm_gate(keys=configs, provider=OpenAICompatProvider())
        async with client, anyio.create_task_group() as tg:
            start = anyio.current_time()
            for prompt, max_tokens in workload:
                tg.start_soon(functools.partial(client.chat, MODEL, prompt, max_tokens=max_tokens))
        makespan = anyio.current_time() - start
        async with httpx.AsyncClient() as http:
            stats = (await http.get(url.removesuffix("/v1") + "/stats")).json()
    # What the provider debited, by its own accounting (not the client's estimate).
    work = sum(s["charged_tokens"] for s in stats.values())
    specs = [LimitSpec.from_limits(rpm, tpm, burst_window) for rpm, tpm in LIMITS.values()]
    return {
        "makespan": makespan,
        "bound": makespan_bound(len(workload), work, specs) + LATENCY,
        "requests": len(workload),
        "accepted": sum(s["accepted"] for s in stats.values()),
        "rate_limited": sum(s["rate_limited"] for s in stats.values()),
    }


@pytest.mark.anyio
@pytest.mark.parametrize("burst_window", [1.0, 60.0], ids=["1s-window", "60s-window"])
async def test_a_burst_over_http_has_no_429_and_meets_the_bound(burst_window: float) -> None:
    result = await _run(burst_window)
    assert result["rate_limited"] == 0, result
    assert result["accepted"] == result["requests"], result
    assert result["makespan"] <= result["bound"] * 1.10, result
