"""The dicts behind ``status()``, ``capacity()``, ``latency()`` and ``scores()``.

Every value is plain data (str, int, float, bool, dict), safe to serialise and
to show: keys appear only by ``key_id``.
"""

from __future__ import annotations

from typing import Any

import anyio

from maxllm_gate.actors import Dispatcher
from maxllm_gate.priority import PRIORITIES

__all__ = ["capacity", "latency", "scores", "status"]


def status(dispatcher: Dispatcher, *, running: bool) -> dict[str, Any]:
    by_priority = dict(zip(PRIORITIES, dispatcher.queued_by_priority(), strict=True))
    keys = {}
    now = anyio.current_time()
    for key_id, actor in dispatcher.actors.items():
        stats = actor.stats
        keys[key_id] = {
            "provider": actor.key.provider,
            "models": sorted(actor.models),
            "enabled": actor.disabled is None,
            "running": actor.running,
            "disabled_reason": actor.disabled,
            "in_flight": len(actor.in_flight),
            "calls": stats.calls,
            "successes": stats.successes,
            "errors": stats.errors,
            "rate_limited": stats.rate_limited,
            "tokens": stats.tokens,
            "calibration": {m: c.as_dict(now) for m, c in actor.calibrations.items()},
            # Per model, the limits with nothing left: why its requests wait.
            "spent": {m: why for m in actor.models if (why := actor.snapshot(m).spent())},
            # Over every process sharing the key through Redis, when it is shared.
            "shared": None if stats.shared is None else stats.shared.as_dict(),
        }
    return {
        "running": running,
        "accepting": running and not dispatcher.closed,
        "strategy": dispatcher.strategy.name,
        "queued": dispatcher.queued,
        "queued_by_priority": by_priority,
        "in_flight": sum(len(a.in_flight) for a in dispatcher.actors.values()),
        "outstanding": dispatcher.outstanding,
        "keys": keys,
    }


def capacity(dispatcher: Dispatcher) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    total: dict[str, float] = {
        "requests_per_minute": 0.0,
        "tokens_per_minute": 0.0,
        "requests_remaining": 0.0,
        "tokens_remaining": 0.0,
    }
    now = anyio.current_time()
    for key_id, actor in dispatcher.actors.items():
        models: dict[str, dict[str, Any]] = {}
        for model in actor.models:
            snap = actor.snapshot(model)
            models[model] = {
                "rpm_limit": snap.rpm_limit,
                "tpm_limit": snap.tpm_limit,
                "requests_remaining": snap.requests_available,
                "tokens_remaining": snap.tokens_available,
                "requests_capacity": snap.requests_capacity,
                "tokens_capacity": snap.tokens_capacity,
                "utilization": snap.utilization,
                "cooldown_remaining": snap.cooldown_remaining,
                # Output-token limits and daily caps, by config name.
                **{
                    cell.name: {
                        "limit": cell.limit,
                        "window_seconds": cell.window,
                        "remaining": cell.available,
                        "capacity": cell.capacity,
                        "full_in": cell.full_in,
                    }
                    for cell in snap.extra
                },
                "spent": snap.spent(),
                # What the key learned of its provider's accounting (limits.calibration).
                **actor.calibrations[model].as_dict(now),
            }
        usable = actor.disabled is None
        requests = sum(m["requests_remaining"] for m in models.values())
        tokens = sum(m["tokens_remaining"] for m in models.values())
        keys[key_id] = {
            "enabled": usable,
            "requests_remaining": requests,
            "tokens_remaining": tokens,
            "models": models,
        }
        if usable:
            total["requests_remaining"] += requests
            total["tokens_remaining"] += tokens
            total["requests_per_minute"] += sum(m["rpm_limit"] for m in models.values())
            total["tokens_per_minute"] += sum(m["tpm_limit"] for m in models.values())
    return {"total_capacity": total, "keys": keys}


def latency(dispatcher: Dispatcher) -> dict[str, dict[str, float]]:
    return {key_id: a.stats.percentiles() for key_id, a in dispatcher.actors.items()}


def scores(dispatcher: Dispatcher, model: str | None = None) -> dict[str, Any]:
    """Per key: the scores for ``model`` (default: each key's first model), per model too."""
    actors = list(dispatcher.actors.values())
    models = [model] if model else sorted({m for a in actors for m in a.models})
    out: dict[str, Any] = {}
    for m in models:
        serving = [a for a in actors if m in a.models]
        for key_id, entry in dispatcher.strategy.scores(serving, m).items():
            row = out.setdefault(key_id, {**entry, "model": m, "models": {}})
            row["models"][m] = entry
    return out
