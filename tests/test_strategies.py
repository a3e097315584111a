"""Each strategy orders keys the way its docstring says."""

from __future__ import annotations

from typing import Any

import pytest

from maxllm_gate import ConfigError, SimulatedProvider, maxllm_gate
from maxllm_gate.config import STRATEGY_NAMES
from maxllm_gate.strategies import STRATEGIES, make_strategy
from tests.support import MODEL, make_key


def test_every_configurable_strategy_exists_and_an_unknown_one_is_an_error() -> None:
    assert set(STRATEGIES) == set(STRATEGY_NAMES)
    with pytest.raises(ConfigError, match="unknown strategy"):
        make_strategy("fastest")


async def _spread(strategy: str, keys: list[Any], requests: int, **provider: Any) -> list[str]:
    used: list[str] = []
    async with maxllm_gate(
        keys=keys, provider=SimulatedProvider(**provider), strategy=strategy
    ) as client:
        for _ in range(requests):
            used.append((await client.chat(MODEL, "hi", max_tokens=10)).key_used)
    return used


@pytest.mark.anyio
async def test_round_robin_takes_keys_in_turn() -> None:
    keys = [make_key(k, 6000, 1_000_000) for k in ("a", "b", "c")]
    assert await _spread("round_robin", keys, 6) == ["a", "b", "c", "a", "b", "c"]


@pytest.mark.anyio
async def test_least_utilized_prefers_the_key_with_the_most_headroom() -> None:
    keys = [make_key("small", 60, 1_000_000), make_key("big", 6000, 1_000_000)]
    used = await _spread("least_utilized", keys, 10)
    assert used.count("big") >= 8


@pytest.mark.anyio
async def test_latency_aware_moves_to_the_faster_key_once_measured() -> None:
    def latency(call: Any) -> float:
        return 2.0 if call.key_id == "slow" else 0.1

    keys = [make_key("slow", 6000, 1_000_000), make_key("fast", 6000, 1_000_000)]
    used = await _spread("latency_aware", keys, 8, latency=latency)
    assert used[2:] == ["fast"] * 6  # each is tried once, then the fast one wins


@pytest.mark.anyio
async def test_token_aware_prefers_a_key_with_room_for_the_whole_request() -> None:
    keys = [make_key("tiny", 6000, 600), make_key("roomy", 6000, 600_000)]
    used = await _spread("token_aware", keys, 4)
    assert set(used) == {"roomy"}


@pytest.mark.anyio
async def test_balanced_scores_are_explained_by_scores() -> None:
    keys = [make_key("a", 600, 100_000), make_key("b", 600, 100_000)]
    async with maxllm_gate(keys=keys, provider=SimulatedProvider(), strategy="balanced") as c:
        await c.chat(MODEL, "hi")
        scores = c.scores()
        assert set(scores) == {"a", "b"}
        for row in scores.values():
            assert {
                "total_score",
                "utilization",
                "latency_normalized",
                "latency_avg_ms",
                "error_penalty",
                "freshness",
            } <= set(row)
        used = (await c.chat(MODEL, "hi")).key_used
        assert scores[used]["total_score"] == min(r["total_score"] for r in scores.values())
