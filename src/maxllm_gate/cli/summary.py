"""The end-of-run summary: counts, tokens, cost per model, 429s, efficiency against the bound.

Costs come from LiteLLM's model price map, read as the JSON file that ships in
the litellm package (offline, and without importing litellm, which takes seconds).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Mapping
from typing import Any

from maxllm_gate.batch import BatchStats
from maxllm_gate.config import KeyConfig, maxllm_gate_config
from maxllm_gate.limits import LimitSpec, makespan_bound

__all__ = ["build_summary", "format_summary", "model_cost"]

_PRICE_FILE = "model_prices_and_context_window_backup.json"


@functools.cache
def _price_map() -> Mapping[str, Any]:
    spec = importlib.util.find_spec("litellm")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return {}
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, _PRICE_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as file:
                prices: Mapping[str, Any] = json.load(file)
                return prices
    return {}


def model_cost(model: str, provider: str, prompt: int, completion: int) -> float | None:
    """US dollars for these tokens by LiteLLM's price map, or None if it has no price."""
    prices = _price_map()
    for name in (model, f"{provider}/{model}", model.partition("/")[2]):
        entry = prices.get(name)
        if isinstance(entry, Mapping) and "input_cost_per_token" in entry:
            return float(
                prompt * entry["input_cost_per_token"]
                + completion * entry.get("output_cost_per_token", 0.0)
            )
    return None


def bound(stats: BatchStats, config: maxllm_gate_config) -> float:
    """The shortest makespan the keys' limits allow for this run's successful requests.

    Each model has its own buckets on each key, so models run side by side: the
    bound is the longest of the per-model bounds. A request larger than a bucket
    is admitted into a full one and leaves a debt that the run need not wait
    out, so each key may take up to the largest request beyond its bucket more.
    """
    per_model: dict[str, list[int]] = {}
    for (model, _key), usage in stats.usage.items():
        totals = per_model.setdefault(model, [0, 0, 0])
        totals[0] += usage.requests
        totals[1] += usage.admitted_tokens
        totals[2] = max(totals[2], usage.largest)
    longest = 0.0
    for model, (requests, tokens, largest) in per_model.items():
        specs = [_spec(key, model, config) for key in config.keys if model in key.models]
        if specs:
            debt = sum(max(0.0, largest - spec.tpm_capacity) for spec in specs)
            longest = max(longest, makespan_bound(requests, tokens - debt, specs))
    return longest


def _spec(key: KeyConfig, model: str, config: maxllm_gate_config) -> LimitSpec:
    return key.models[model].limit_spec(config.burst_seconds)


def build_summary(
    stats: BatchStats,
    config: maxllm_gate_config,
    status: Mapping[str, Any],
    *,
    output: str | None = None,
    provider_429s: int | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """The summary as plain data (what ``--json`` prints).

    ``status`` is the client's ``status()`` at the end; ``provider_429s``
    overrides the 429s counted from it (the simulated provider knows them all).
    ``total``, the input's lines, makes the lines a stop left unread count as
    not done too.
    """
    providers = {key.key_id: key.provider for key in config.keys}
    models: dict[str, dict[str, Any]] = {}
    for (model, key_id), usage in sorted(stats.usage.items()):
        row = models.setdefault(
            model, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
        )
        row["requests"] += usage.requests
        row["prompt_tokens"] += usage.prompt_tokens
        row["completion_tokens"] += usage.completion_tokens
        cost = model_cost(
            model, providers.get(key_id, ""), usage.prompt_tokens, usage.completion_tokens
        )
        row["cost_usd"] = (
            None if cost is None or row["cost_usd"] is None else row["cost_usd"] + cost
        )
    costs = [row["cost_usd"] for row in models.values()]
    elapsed = stats.elapsed
    shortest = bound(stats, config)
    keys = {
        key_id: {
            "requests": info["successes"],
            "errors": info["errors"],
            "rate_limited": info["rate_limited"],
            "tokens": info["tokens"],
        }
        for key_id, info in status.get("keys", {}).items()
    }
    seen_429s = sum(k["rate_limited"] for k in keys.values())
    tokens = stats.prompt_tokens + stats.completion_tokens
    unfinished = stats.unfinished
    if total is not None:  # every line is done, skipped, or not done
        unfinished = max(unfinished, total - stats.done - stats.skipped)
    return {
        "output": output,
        "requests": {
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "invalid": stats.invalid,
            "skipped": stats.skipped,
            "skipped_failed": stats.skipped_failed,
            "unfinished": unfinished,
        },
        "stopped": stats.stopped,
        "elapsed": round(elapsed, 3),
        "tokens": {
            "prompt": stats.prompt_tokens,
            "completion": stats.completion_tokens,
            "per_second": round(tokens / elapsed, 1) if elapsed > 0 else None,
        },
        "models": models,
        "cost_usd": None if not costs or None in costs else sum(costs),
        "keys": keys,
        "provider_429s": seen_429s if provider_429s is None else provider_429s,
        "held_for_capacity": stats.waited,
        "bound": round(shortest, 3),
        "efficiency": round(shortest / elapsed, 3) if elapsed > 0 and shortest > 0 else None,
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as text, for a person."""
    r = summary["requests"]
    lines = [
        f"requests     {r['succeeded']} succeeded, {r['failed']} failed"
        + (f" ({r['invalid']} invalid lines)" if r["invalid"] else ""),
    ]
    if r["skipped"]:
        lines.append(
            f"resumed      {r['skipped']} already in the output"
            + (f" ({r['skipped_failed']} of them errors)" if r["skipped_failed"] else "")
        )
    if r["unfinished"] or summary["stopped"]:
        lines.append(f"stopped      {r['unfinished']} not done; run again to resume")
    t = summary["tokens"]
    rate = f", {t['per_second']:,.0f}/s" if t["per_second"] else ""
    lines.append(f"tokens       {t['prompt']:,} prompt + {t['completion']:,} completion{rate}")
    for model, row in summary["models"].items():
        cost = "no price known" if row["cost_usd"] is None else f"${row['cost_usd']:.4f}"
        lines.append(f"  {model:30s} {row['requests']:6d} requests  {cost}")
    if summary["cost_usd"] is not None:
        lines.append(f"cost         ${summary['cost_usd']:.4f} (LiteLLM's price map)")
    lines.append(
        f"429s         {summary['provider_429s']} from the provider; "
        f"{summary['held_for_capacity']} requests waited for capacity instead"
    )
    lines.append(f"elapsed      {summary['elapsed']:.1f} s")
    if summary["efficiency"] is not None:
        lines.append(
            f"bound        {summary['bound']:.1f} s (the limits allow no faster); "
            f"efficiency {summary['efficiency']:.3f}"
        )
    for key_id, info in summary["keys"].items():
        lines.append(
            f"  {key_id:20s} {info['requests']:6d} requests  {info['tokens']:9,d} tokens"
            f"  {info['rate_limited']} 429s"
        )
    if summary["output"]:
        lines.append(f"output       {summary['output']}")
    return "\n".join(lines)
