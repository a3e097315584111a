"""The end-of-run summary: prices from LiteLLM's map (offline), the bound, the text."""

from __future__ import annotations

from maxllm_gate.batch import BatchStats, ModelUsage
from maxllm_gate.cli.summary import build_summary, format_summary, model_cost
from maxllm_gate.config import maxllm_gate_config
from tests.support import make_key


def test_a_known_model_has_a_price_and_an_unknown_one_has_none() -> None:
    cost = model_cost("gpt-4o-mini", "openai", 1_000_000, 1_000_000)
    assert cost is not None and 0.1 < cost < 10  # dollars per million tokens, in and out
    assert model_cost("openai/gpt-4o-mini", "openai", 1_000_000, 1_000_000) == cost
    assert model_cost("sim-model", "openai", 1000, 1000) is None


def test_the_summary_counts_prices_and_compares_with_the_bound() -> None:
    config = maxllm_gate_config(
        keys=[
            make_key("a", 60, 1_000_000, model="gpt-4o-mini"),
            make_key("b", 60, 1_000_000, model="gpt-4o-mini"),
        ]
    )
    stats = BatchStats(
        succeeded=122, failed=1, invalid=1, skipped=5, started_at=0.0, finished_at=62.0
    )
    stats.usage[("gpt-4o-mini", "a")] = ModelUsage(61, 6100, 1220, 6100 + 61 * 100)
    stats.usage[("gpt-4o-mini", "b")] = ModelUsage(61, 6100, 1220, 6100 + 61 * 100)
    stats.prompt_tokens, stats.completion_tokens = 12200, 2440
    status = {
        "keys": {k: {"successes": 61, "errors": 0, "rate_limited": 0, "tokens": 7320} for k in "ab"}
    }
    summary = build_summary(stats, config, status, output="out.jsonl")
    # Two keys at 60 RPM with a one-request burst: 122 requests need (122 - 2) / 2 = 60 s.
    assert summary["bound"] == 60.0
    assert summary["efficiency"] == round(60 / 62, 3)
    assert summary["models"]["gpt-4o-mini"]["requests"] == 122
    assert summary["cost_usd"] == summary["models"]["gpt-4o-mini"]["cost_usd"] > 0
    text = format_summary(summary)
    assert "122 succeeded, 1 failed (1 invalid lines)" in text
    assert "resumed      5 already in the output" in text
    assert "efficiency 0.968" in text
