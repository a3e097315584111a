"""A seeded client on virtual time repeats: the same requests, keys, attempts and times.

Each run is its own event loop (``anyio.run``), so these tests are synchronous and
parametrised over both backends themselves.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from maxllm_gate import SimulatedProvider, TransientError, maxllm_gate
from maxllm_gate.errors import ConfigError
from maxllm_gate.testing import VirtualTimeEventLoop, seeded_trio_scheduler
from tests.support import MODEL, make_key

KEYS = [make_key("k1", 120, 60_000), make_key("k2", 120, 60_000), make_key("k3", 60, 30_000)]


async def _workload(client_options: dict[str, Any]) -> list[tuple[Any, ...]]:
    provider = SimulatedProvider(latency=lambda call: 0.2 + len(call.request_id) * 0.01)
    # Transient errors: each retry waits a random (jittered) delay.
    provider.inject(TransientError("upstream 503", status_code=503), times=12)
    seen: list[tuple[Any, ...]] = []
    async with maxllm_gate(keys=KEYS, provider=provider, **client_options) as client:

        async def one(i: int) -> None:
            r = await client.chat(MODEL, f"request {i}", max_tokens=20)
            seen.append((i, r.request_id, r.key_used, r.attempts, round(r.latency, 9)))

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(one, i)
                await anyio.sleep(0.01)
    return seen


def _run(backend: str, seed: int, client_options: dict[str, Any]) -> list[tuple[Any, ...]]:
    if backend == "asyncio":
        options: dict[str, Any] = {"loop_factory": VirtualTimeEventLoop}
        return anyio.run(_workload, client_options, backend=backend, backend_options=options)
    with seeded_trio_scheduler(seed):
        options = {"clock": MockClock(autojump_threshold=0)}
        return anyio.run(_workload, client_options, backend=backend, backend_options=options)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_same_seed_repeats_a_run_exactly(backend: str) -> None:
    first = _run(backend, 1, {"seed": 42})
    again = _run(backend, 1, {"seed": 42})
    assert len(first) == 60
    assert any(attempts > 1 for *_, attempts, _ in first)  # the jitter was drawn
    assert first == again
    other_seed = _run(backend, 1, {"seed": 43})
    assert other_seed != first  # request ids and jitter come from the seed


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_random_instance_feeds_the_choices_too(backend: str) -> None:
    first = _run(backend, 1, {"random": random.Random(7)})
    again = _run(backend, 1, {"random": random.Random(7)})
    assert first == again


def test_seed_and_random_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="seed or random"):
        maxllm_gate(seed=1, random=random.Random(1))
