"""A fake Anthropic Messages API over real HTTP, enforcing limits as Anthropic does.

It speaks ``POST /v1/messages`` with Anthropic's wire format: ``x-api-key``
authentication, ``system`` and ``messages`` of text or text blocks,
``max_tokens`` required, an answer with ``content`` blocks, ``stop_reason`` and
``usage`` (``input_tokens``, ``output_tokens``, ``cache_creation_input_tokens``,
``cache_read_input_tokens``), and errors as ``{"type": "error", "error": {...}}``.
With ``"stream": true`` the answer is server-sent events, as Anthropic sends
them: ``message_start`` (the message, its ``usage`` with the input tokens and
one output token), ``content_block_start``, a ``ping``, ``content_block_delta``
events of a few tokens each, ``content_block_stop``, ``message_delta`` (the
``stop_reason`` and the cumulative ``usage.output_tokens``) and
``message_stop``; the rate-limit headers come with the response's head.

Its limits are Anthropic's shape, counted by its own rules and never the client's
code: per (api key, model), three continuously refilling buckets,
requests (RPM), input tokens (ITPM) and output tokens (OTPM), each holding
``burst_window`` seconds of its limit.

- ITPM is charged at admission with the input the fake counts itself (a word or
  punctuation mark is a token, 3 more per message), less the cache reads: a
  text block marked ``cache_control`` is written to the cache the first time
  (``cache_creation_input_tokens``, counted) and read from it after
  (``cache_read_input_tokens``, not counted, except on the models in
  ``cache_reads_count``, as Anthropic's rate-limits page says).
- OTPM is charged ``max_tokens`` at admission and corrected to the real output
  when the answer ends (for a stream the caller drops, to what was sent).
- A call that does not fit gets a 429 ``rate_limit_error`` with ``retry-after``
  (whole seconds) and the ``anthropic-ratelimit-*`` headers; every answer
  carries them, with RFC 3339 resets.
- :meth:`FakeAnthropic.overload` answers the next calls with Anthropic's 529
  ``overloaded_error``, charging nothing.

::

    limits = {"sk-ant-1": AnthropicLimits(rpm=50, itpm=40_000, otpm=8_000)}
    async with FakeAnthropic(limits=limits).running() as fake:
        ...  # LiteLLM: model="anthropic/claude-sonnet-4-5", api_base=fake.url
    assert fake.rate_limited == 0
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.abc
import attrs

from maxllm_gate.config import key_fingerprint
from maxllm_gate.testing._http import Connection, Request, serve_connection
from maxllm_gate.testing.provider_limits import ProviderBucket

__all__ = ["AnthropicLimits", "FakeAnthropic"]

_PIECE = re.compile(r"\w+|[^\w\s]")
_TOKENS_PER_MESSAGE = 3
_WORD = "lorem "  # one token of generated text
_CHUNK_TOKENS = 4  # tokens per streamed text delta
_JSON = ("content-type", "application/json")
# Models whose cache reads still count toward ITPM: those Anthropic's rate-limits
# tables mark with a dagger (the fake's own list; docs/providers.md has the source).
_CACHE_READS_COUNT = (
    "claude-3-5-sonnet",
    "claude-3-5-haiku",
    "claude-3-opus",
    "claude-3-sonnet",
    "claude-3-haiku",
)


@attrs.frozen
class AnthropicLimits:
    """One key's limits for one model: requests, input and output tokens per minute."""

    rpm: float
    itpm: float
    otpm: float


@attrs.define
class AnthropicStats:
    """What the fake saw and charged for one key."""

    calls: int = 0
    accepted: int = 0
    rate_limited: int = 0
    overloaded: int = 0  # 529s answered
    input_charged: int = 0  # ITPM debited
    output_charged: int = 0  # OTPM debited, after the correction to the real output
    input_tokens: int = 0  # usage.input_tokens answered (uncached)
    cache_read_tokens: int = 0
    output_tokens: int = 0


class _Buckets:
    __slots__ = ("input", "limits", "output", "requests")

    def __init__(self, limits: AnthropicLimits, burst_window: float) -> None:
        self.limits = limits
        self.requests = ProviderBucket.for_limit(limits.rpm, burst_window)
        self.input = ProviderBucket.for_limit(limits.itpm, burst_window)
        self.output = ProviderBucket.for_limit(limits.otpm, burst_window)

    def admit(self, now: float, input_tokens: float, output_tokens: float) -> float:
        """Charge all three or none; the seconds until all fit (inf: never)."""
        wait = max(
            self.requests.wait(now, 1.0),
            self.input.wait(now, input_tokens),
            self.output.wait(now, output_tokens),
        )
        if wait == 0.0:
            self.requests.take(now, 1.0)
            self.input.take(now, input_tokens)
            self.output.take(now, output_tokens)
        return wait


class FakeAnthropic:
    """An Anthropic-compatible HTTP server enforcing RPM, ITPM and OTPM.

    Args:
      limits: ``{api_key: AnthropicLimits}``, for every model; any other key gets a 401.
      burst_window: seconds of each limit a bucket holds.
      latency: seconds before an answer (before a stream's first event).
      seconds_per_token: pace of the generated text, plain or streamed.
      completion_tokens: tokens generated per call, never more than ``max_tokens``.

    `stats` counts per key fingerprint; `rate_limited` and `accepted` over all keys.
    """

    def __init__(
        self,
        *,
        limits: Mapping[str, AnthropicLimits],
        burst_window: float = 1.0,
        latency: float = 0.0,
        seconds_per_token: float = 0.0,
        completion_tokens: int = 16,
    ) -> None:
        self._limits = dict(limits)
        self.burst_window = burst_window
        self.latency = latency
        self.seconds_per_token = seconds_per_token
        self.completion_tokens = completion_tokens
        self._buckets: dict[tuple[str, str], _Buckets] = {}
        self._stats: dict[str, AnthropicStats] = {}
        self._cache: set[str] = set()  # digests of cached prompt prefixes
        self._ids = itertools.count(1)
        self._overloads = 0  # calls still to answer with a 529
        self._url: str | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the ``api_base`` for Anthropic clients."""
        if self._url is None:
            raise RuntimeError("FakeAnthropic is not serving yet")
        return self._url

    def stats_for(self, api_key: str) -> AnthropicStats:
        return self._stats.setdefault(key_fingerprint(api_key), AnthropicStats())

    def overload(self, times: int = 1) -> None:
        """Answer the next ``times`` calls (of any key) with a 529 ``overloaded_error``."""
        self._overloads += times

    @property
    def rate_limited(self) -> int:
        return sum(s.rate_limited for s in self._stats.values())

    @property
    def accepted(self) -> int:
        return sum(s.accepted for s in self._stats.values())

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve on a free port of 127.0.0.1 until cancelled; reports `url`."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            self._url = f"http://127.0.0.1:{port}"
            try:
                task_status.started(self._url)
                await listener.serve(lambda stream: serve_connection(stream, self._handle))
            finally:
                self._url = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeAnthropic]:
        """Serve in the background for the ``async with`` block."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.serve)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()

    # -- one call ------------------------------------------------------------------------

    async def _handle(self, request: Request, http: Connection) -> None:
        if request.method != "POST" or request.path.rstrip("/") not in ("/v1/messages",):
            await http.respond(404, [_JSON], _error("not_found_error", "Not found"))
            return
        api_key = request.headers.get("x-api-key", "")
        if api_key not in self._limits:
            body = _error("authentication_error", "invalid x-api-key")
            await http.respond(401, [_JSON], body)
            return
        stats = self.stats_for(api_key)
        stats.calls += 1
        try:
            body = json.loads(request.body)
            model, max_tokens = body["model"], int(body["max_tokens"])
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            problem = _error("invalid_request_error", "model, max_tokens and messages required")
            await http.respond(400, [_JSON], problem)
            return
        if self._overloads > 0:
            self._overloads -= 1
            stats.overloaded += 1
            await http.respond(529, [_JSON], _error("overloaded_error", "Overloaded"))
            return
        uncached, created, read = self._count_input(model, body.get("system"), messages)
        counted = uncached + created + (read if model.startswith(_CACHE_READS_COUNT) else 0)
        buckets = self._buckets_of(api_key, model)
        now = anyio.current_time()
        wait = buckets.admit(now, counted, max_tokens)
        if wait > 0:
            stats.rate_limited += 1
            headers = [
                _JSON,
                ("retry-after", str(max(1, math.ceil(wait))) if wait != math.inf else "60"),
                *self._headers(buckets, now),
            ]
            message = f"This request would exceed your organization's rate limit for {model}."
            await http.respond(429, headers, _error("rate_limit_error", message))
            return
        stats.accepted += 1
        stats.input_charged += counted
        stats.input_tokens += uncached
        stats.cache_read_tokens += read
        headers = self._headers(buckets, now)  # right after this call's charge
        output = max(0, min(self.completion_tokens, max_tokens))
        usage = {
            "input_tokens": uncached,
            "output_tokens": output,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
        }
        answer = {
            "id": f"msg_fake{next(self._ids):012d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": _WORD * output}],
            "stop_reason": "max_tokens" if output == max_tokens else "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
        if body.get("stream"):
            await self._stream(http, headers, answer, buckets, max_tokens, stats)
            return
        await anyio.sleep(self.latency + self.seconds_per_token * output)
        buckets.output.give_back(anyio.current_time(), max_tokens - output)
        stats.output_charged += output
        stats.output_tokens += output
        await http.respond(200, [_JSON, *headers], json.dumps(answer).encode())

    async def _stream(
        self,
        http: Connection,
        headers: list[tuple[str, str]],
        message: dict[str, Any],
        buckets: _Buckets,
        max_tokens: int,
        stats: AnthropicStats,
    ) -> None:
        """Send ``message`` as Anthropic's events; OTPM keeps what was generated,
        also when the caller hangs up before the end."""
        output: int = message["usage"]["output_tokens"]
        sent = 0
        try:
            await anyio.sleep(self.latency)
            stream_headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
            await http.start_response(200, [*stream_headers, *headers])
            start = {
                **message,
                "content": [],
                "stop_reason": None,
                "usage": {**message["usage"], "output_tokens": 1},
            }
            await http.send_data(_event("message_start", {"message": start}))
            block = {"index": 0, "content_block": {"type": "text", "text": ""}}
            await http.send_data(_event("content_block_start", block))
            await http.send_data(_event("ping", {}))
            while sent < output:
                n = min(_CHUNK_TOKENS, output - sent)
                await anyio.sleep(self.seconds_per_token * n)
                delta = {"index": 0, "delta": {"type": "text_delta", "text": _WORD * n}}
                await http.send_data(_event("content_block_delta", delta))
                sent += n
            await http.send_data(_event("content_block_stop", {"index": 0}))
            end = {
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": output},
            }
            await http.send_data(_event("message_delta", end))
            await http.send_data(_event("message_stop", {}))
            await http.end_response()
        finally:
            buckets.output.give_back(anyio.current_time(), max_tokens - sent)
            stats.output_charged += sent
            stats.output_tokens += sent

    def _count_input(self, model: str, system: Any, messages: Any) -> tuple[int, int, int]:
        """(uncached, cache written, cache read) tokens of the input, by the fake's rules.

        A block marked ``cache_control`` caches the prompt up to and including it,
        for that model.
        """
        blocks: list[tuple[str, bool]] = []  # (text, ends a cached prefix)
        for part in _blocks(system):
            blocks.append(part)
        overhead = 0
        for message in messages if isinstance(messages, list) else ():
            overhead += _TOKENS_PER_MESSAGE
            blocks += _blocks(message.get("content") if isinstance(message, Mapping) else None)
        counts = [len(_PIECE.findall(text)) for text, _ in blocks]
        last_mark = max((i for i, (_, marked) in enumerate(blocks) if marked), default=-1)
        if last_mark < 0:
            return sum(counts) + overhead, 0, 0
        prefix = sum(counts[: last_mark + 1])
        digest = hashlib.sha256(
            json.dumps([model, *(text for text, _ in blocks[: last_mark + 1])]).encode()
        ).hexdigest()
        rest = sum(counts[last_mark + 1 :]) + overhead
        if digest in self._cache:
            return rest, 0, prefix
        self._cache.add(digest)
        return rest, prefix, 0

    def _buckets_of(self, api_key: str, model: str) -> _Buckets:
        buckets = self._buckets.get((api_key, model))
        if buckets is None:
            buckets = _Buckets(self._limits[api_key], self.burst_window)
            self._buckets[api_key, model] = buckets
        return buckets

    def _headers(self, buckets: _Buckets, now: float) -> list[tuple[str, str]]:
        out = []
        dims = (
            ("requests", buckets.requests),
            ("input-tokens", buckets.input),
            ("output-tokens", buckets.output),
        )
        for name, bucket in dims:
            full_at = time.time() + bucket.seconds_until_full(now)
            out += [
                (f"anthropic-ratelimit-{name}-limit", str(int(bucket.limit_per_minute))),
                (f"anthropic-ratelimit-{name}-remaining", str(int(bucket.available(now)))),
                (f"anthropic-ratelimit-{name}-reset", _rfc3339(full_at)),
            ]
        return out


def _blocks(content: Any) -> list[tuple[str, bool]]:
    """The text blocks of a ``system`` or message ``content``: (text, cache_control)."""
    if isinstance(content, str):
        return [(content, False)]
    blocks = []
    for block in content if isinstance(content, list) else ():
        if isinstance(block, Mapping) and isinstance(block.get("text"), str):
            blocks.append((block["text"], block.get("cache_control") is not None))
    return blocks


def _event(kind: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event, named as Anthropic names them, its data typed too."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def _rfc3339(epoch: float) -> str:
    moment = datetime.fromtimestamp(math.ceil(epoch), tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
