"""maxllm_gate, as a user would set it up: one KeyConfig per key with its limits.

Runs in the project's environment. ``options.transport`` is ``openai_compat``
(the native transport) or ``litellm``. Everything else is the default
configuration (a 1 s burst that header sync may enlarge, the default strategy
and retries), unless ``options.settings`` overrides fields of the config.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from maxllm_gate import KeyConfig, __version__, maxllm_gate


def versions() -> dict[str, str]:
    return {"maxllm_gate": __version__}


@contextlib.asynccontextmanager
async def open_client(spec: dict[str, Any]) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    model = spec["model"]
    keys = [
        KeyConfig(
            api_key=key["api_key"],
            provider="openai",
            key_id=key["id"],
            api_base=spec["url"],
            transport=spec["options"]["transport"],
            models={model: {"rpm_limit": key["rpm"], "tpm_limit": key["tpm"]}},
        )
        for key in spec["keys"]
    ]
    async with maxllm_gate(keys=keys, **spec["options"].get("settings", {})) as client:

        async def call(request: dict[str, Any]) -> Any:
            return await client.chat(
                model,
                request["prompt"],
                max_tokens=request["max_tokens"],
                priority=request.get("priority"),
            )

        yield call
