"""LiteLLM's ``Router``, with ``rpm`` and ``tpm`` on every deployment.

Runs in the peers' environment (``bench/.peers-venv``). One deployment per key,
all under one model name; ``options.routing_strategy`` is
``usage-based-routing-v2`` or ``simple-shuffle`` (which, with rpm/tpm set, picks
deployments weighted by them). Its reliability settings are those of LiteLLM's
own retry example, ``num_retries=3`` (the default is 2) and ``retry_after=5``, with
the default per-deployment cooldowns after failures (the Router honours
``Retry-After`` too). Under the ``priority`` scenario,
each request carries ``priority`` (0 for high, lower numbers first), which puts
it through the Router's scheduler queue.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOG", "ERROR")

PRIORITY = {"high": 0, "medium": 100, "low": 200}


def versions() -> dict[str, str]:
    return {"litellm": version("litellm"), "openai": version("openai")}


@contextlib.asynccontextmanager
async def open_client(spec: dict[str, Any]) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    import litellm

    litellm.suppress_debug_info = True
    options = spec["options"]
    model_list = [
        {
            "model_name": "bench",
            "litellm_params": {
                "model": f"openai/{spec['model']}",
                "api_key": key["api_key"],
                "api_base": spec["url"],
                "rpm": key["rpm"],
                "tpm": key["tpm"],
            },
        }
        for key in spec["keys"]
    ]
    router = litellm.Router(
        model_list=model_list,
        routing_strategy=options["routing_strategy"],
        # The retry settings of LiteLLM's own Router example; cooldowns stay at their defaults.
        num_retries=options.get("num_retries", 3),
        retry_after=options.get("retry_after", 5),
    )
    prioritized = any(r.get("priority") not in (None, "medium") for r in spec["requests"])

    async def call(request: dict[str, Any]) -> Any:
        extra = {"priority": PRIORITY[request["priority"]]} if prioritized else {}
        return await router.acompletion(
            model="bench",
            messages=[{"role": "user", "content": request["prompt"]}],
            max_tokens=request["max_tokens"],
            **extra,
        )

    try:
        yield call
    finally:
        with contextlib.suppress(Exception):
            router.discard()
