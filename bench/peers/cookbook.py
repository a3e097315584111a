"""The OpenAI cookbook's throttling: two token buckets per key, and a pause after a 429.

Runs in the peers' environment. This follows ``api_request_parallel_processor.py``
from the openai-cookbook, with its defaults: each key has a request bucket and a
token bucket that start full and hold one minute of their limit, refilled
continuously; a request costs its tiktoken count (``cl100k_base``, 4 tokens per
message + 2) plus ``max_tokens``; the loop checks every millisecond; after a
rate-limit error the key pauses 15 s; a failed request is retried, up to 5
attempts in all. The cookbook drives one key: here each key runs its own
processor, and all of them take requests from one shared queue (retries first).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR = 15
SECONDS_TO_SLEEP_EACH_LOOP = 0.001
MAX_ATTEMPTS = 5


def versions() -> dict[str, str]:
    return {"cookbook recipe": "api_request_parallel_processor.py", "httpx": version("httpx")}


class RequestFailed(Exception):
    """The request used up its attempts."""


class _Job:
    __slots__ = ("attempts_left", "done", "request", "tokens")

    def __init__(self, request: dict[str, Any], tokens: int) -> None:
        self.request = request
        self.tokens = tokens
        self.attempts_left = MAX_ATTEMPTS
        self.done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()


class _Processor:
    """One key's buckets and loop, as in the cookbook's ``process_api_requests_from_file``."""

    def __init__(
        self,
        key: dict[str, Any],
        spec: dict[str, Any],
        queue: collections.deque[_Job],
        wake: asyncio.Event,
        http: Any,
    ) -> None:
        self.key = key
        self.spec = spec
        self.queue = queue
        self.wake = wake
        self.http = http
        self.rpm, self.tpm = float(key["rpm"]), float(key["tpm"])
        self.available_requests, self.available_tokens = self.rpm, self.tpm
        self.last_update = time.time()
        self.last_rate_limit_error = 0.0
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
            now = time.time()
            elapsed = now - self.last_update
            self.available_requests = min(
                self.available_requests + self.rpm * elapsed / 60.0, self.rpm
            )
            self.available_tokens = min(self.available_tokens + self.tpm * elapsed / 60.0, self.tpm)
            self.last_update = now
            if (
                self.queue
                and self.available_requests >= 1
                and self.available_tokens >= self.queue[0].tokens
            ):
                job = self.queue.popleft()
                self.available_requests -= 1
                self.available_tokens -= job.tokens
                job.attempts_left -= 1
                task = asyncio.create_task(self.send(job))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(SECONDS_TO_SLEEP_EACH_LOOP)
            since_error = time.time() - self.last_rate_limit_error
            if since_error < SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR:
                await asyncio.sleep(SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR - since_error)

    async def send(self, job: _Job) -> None:
        body = {
            "model": self.spec["model"],
            "messages": [{"role": "user", "content": job.request["prompt"]}],
            "max_tokens": job.request["max_tokens"],
        }
        headers = {"authorization": f"Bearer {self.key['api_key']}"}
        error: str | None = None
        try:
            response = await self.http.post("/chat/completions", json=body, headers=headers)
            payload = response.json()
        except Exception as exc:
            error = repr(exc)
        else:
            if "error" in payload:
                error = str(payload["error"].get("message", ""))
                if "rate limit" in error.lower():
                    self.last_rate_limit_error = time.time()
            else:
                job.done.set_result(payload)
                return
        if job.attempts_left:
            self.queue.appendleft(job)  # the cookbook's retry queue goes first
            self.wake.set()
        else:
            job.done.set_exception(RequestFailed(error))


@contextlib.asynccontextmanager
async def open_client(spec: dict[str, Any]) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    import httpx
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base")

    def tokens(request: dict[str, Any]) -> int:
        # The cookbook's num_tokens_consumed_from_request, for one user message.
        return (
            4
            + len(encoding.encode("user"))
            + len(encoding.encode(request["prompt"]))
            + 2
            + (request["max_tokens"])
        )

    queue: collections.deque[_Job] = collections.deque()
    wake = asyncio.Event()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=spec["url"], timeout=600, limits=limits) as http:
        processors = [_Processor(key, spec, queue, wake, http) for key in spec["keys"]]
        loops = [asyncio.create_task(p.run()) for p in processors]

        async def call(request: dict[str, Any]) -> Any:
            job = _Job(request, tokens(request))
            queue.append(job)
            wake.set()
            return await job.done

        try:
            yield call
        finally:
            for loop in loops:
                loop.cancel()
            for p in processors:
                for task in list(p.tasks):
                    task.cancel()


def _vocabulary_folder() -> None:
    """tiktoken's cl100k_base offline: LiteLLM ships it (no download in a benchmark)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    if spec and spec.origin:
        folder = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
        os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)


_vocabulary_folder()
