"""The naive approach: one ``AsyncOpenAI`` per key, round-robin, fire everything at once.

Runs in the peers' environment. No limiter at all; the OpenAI SDK's own retries
(exponential backoff that honours ``retry-after-ms`` / ``retry-after``) handle the
429s. We raise ``max_retries`` from its default of 2 to ``options.max_retries``
(5), so that it has a fair chance to get through.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version
from typing import Any


def versions() -> dict[str, str]:
    return {"openai": version("openai")}


@contextlib.asynccontextmanager
async def open_client(spec: dict[str, Any]) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    from openai import AsyncOpenAI

    retries = spec["options"].get("max_retries", 5)
    clients = [
        AsyncOpenAI(api_key=key["api_key"], base_url=spec["url"], max_retries=retries)
        for key in spec["keys"]
    ]
    turn = itertools.cycle(clients)

    async def call(request: dict[str, Any]) -> Any:
        return await next(turn).chat.completions.create(
            model=spec["model"],
            messages=[{"role": "user", "content": request["prompt"]}],
            max_tokens=request["max_tokens"],
        )

    try:
        yield call
    finally:
        for client in clients:
            await client.close()
