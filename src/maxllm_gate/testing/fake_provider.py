"""A fake OpenAI-compatible provider over real HTTP, enforcing limits like OpenAI does.

It runs in process, in the test's own event loop (asyncio or trio), on a free
port of 127.0.0.1, and speaks enough of the OpenAI wire format for any
OpenAI-compatible client: ``POST /v1/chat/completions`` (plain and streamed),
``POST /v1/embeddings``, ``GET /v1/models``, and ``GET /stats``. Its enforcement mirrors
`~maxllm_gate.providers.simulated.SimulatedProvider`: a continuously refilling
RPM and TPM bucket per (api key, model), holding ``burst_window`` seconds of
each limit, charged ``prompt + max_tokens`` at admission. It counts and
enforces with its own model of a provider's limiter,
`maxllm_gate.testing.provider_limits`, never with the client's code: by
default the prompt is charged by its characters, as OpenAI does. A call that
does not fit gets a 429 with OpenAI's body and headers, and is counted: a gate
that works never sees one. An embedding request is charged its input only;
its vectors are `~maxllm_gate.testing.provider_limits.fake_vector` values (floats
or, with ``encoding_format: "base64"``, little-endian float32 in base64, as
OpenAI sends them), and past OpenAI's per-request limits it gets OpenAI's 400::

    async with FakeProvider(limits={"sk-1": {"gpt-4o-mini": (600, 60_000)}}).running() as fake:
        async with httpx.AsyncClient(base_url=fake.url) as http:
            ...
    assert fake.rate_limited == 0

Other processes can use it too: ``python -m maxllm_gate.testing.fake_provider
--rpm 60 --tpm 10000 --keys k1,k2`` prints ``URL http://127.0.0.1:PORT/v1``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import functools
import itertools
import json
import math
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import anyio
import anyio.abc
import attrs

from maxllm_gate.config import key_fingerprint
from maxllm_gate.testing._http import Connection, Request, serve_connection
from maxllm_gate.testing.provider_limits import (
    DEFAULT_MAX_TOKENS,
    ChargeRule,
    ModelLimiter,
    count_tokens,
    embedding_dimensions,
    embedding_inputs,
    embedding_request_problem,
    fake_vector,
    max_tokens_charge,
    too_large_message,
)

__all__ = ["FakeProvider", "format_go_duration", "key_fingerprint", "main"]

_WORD = "lorem "  # one token of generated text
_CHUNK_TOKENS = 4  # tokens per streamed chunk
_ANY_MODEL = "*"  # in `limits`: the limits of every model of that key not named
_JSON = ("content-type", "application/json")
_Headers = list[tuple[str, str]]


def format_go_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration.String()``: "1s", "6m0s", "120ms", "1m30.5s".

    OpenAI's ``x-ratelimit-reset-*`` headers use this format. Negative values give "0s".
    """
    ns = max(0, round(seconds * 1e9))
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:  # below a second Go picks the largest unit that fits
        for unit, name in ((1_000_000, "ms"), (1_000, "µs"), (1, "ns")):
            if ns >= unit:
                return _with_fraction(ns, unit) + name
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = _with_fraction(rest, 10**9) + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text


def _with_fraction(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    digits = str(fraction).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def _header_duration(seconds: float) -> str:
    # Whole milliseconds, like OpenAI's headers; rounded up so a client that waits it out fits.
    return format_go_duration(math.ceil(max(0.0, seconds) * 1000 - 1e-6) / 1000)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _floor(value: float) -> int:
    return math.floor(value + 1e-6)  # float noise: 2.9999999 units left are 3, not 2


def _error(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


@attrs.define
class _KeyStats:
    calls: int = 0  # every request to /v1/chat/completions or /v1/embeddings with this key
    accepted: int = 0  # admitted by the buckets (and charged)
    rate_limited: int = 0  # 429s for limits (injected ones are faults)
    faults: int = 0  # 401s, injected answers, error_rate faults and hangs
    prompt_tokens: int = 0  # of the calls answered with a 200, by the provider's tokenizer
    completion_tokens: int = 0  # actually sent (a stream cut short counts what went out)
    charged_tokens: int = 0  # debited by the limiter for admitted calls, less usage refunds
    in_flight: int = 0
    max_in_flight: int = 0


@attrs.define
class _Injection:
    status: int
    times: int
    api_key: str | None
    body: bytes
    headers: Mapping[str, str]


@attrs.define
class _Cut:
    """A call to leave unanswered ("hang") or to cut with a TCP reset ("reset")."""

    kind: str
    times: int
    api_key: str | None
    after_chunks: int = 0


@attrs.define
class _Chat:
    """One admitted chat call, from admission to settlement."""

    api_key: str
    model: str
    prompt: int  # usage.prompt_tokens: the provider's own count
    charge: int  # what the limiter debits at admission
    max_tokens: int  # of one choice
    allowance: int  # the completion part of the charge: max_tokens times n
    completion: int
    stream: bool
    include_usage: bool
    meter: ModelLimiter | None
    body: dict[str, Any] = attrs.field(factory=dict, repr=False)
    answered: bool = False
    delivered: int = 0


class FakeProvider:
    """An OpenAI-compatible HTTP server that enforces rate limits, with injectable faults.

    Args:
      limits: ``{api_key: {model: (rpm, tpm)}}`` enforced. The model ``"*"``
        stands for every model of that key not named. With ``limits`` and no
        ``default_limits``, any other key gets a 401.
      default_limits: ``(rpm, tpm)`` for keys and models not in ``limits``;
        None leaves them unlimited.
      burst_window: seconds of each limit a bucket holds (1 = OpenAI's
        quantized enforcement, 60 = a full minute of burst).
      latency: seconds before the first byte of an answer (or a function giving them).
      seconds_per_token: pace of the completion; streams send ~4 tokens a chunk.
      completion_tokens: tokens generated per call, never more than its
        ``max_tokens`` (1024 when the request gives none).
      token_accounting: ``"admission"`` keeps the ``prompt + max_tokens``
        charge; ``"usage"`` refunds the unused completion when the call ends.
      error_rate: chance that an admitted call fails with a 500 or 503 (alternately).
      hang_rate: chance that an admitted call is never answered, until the client hangs up.
      requests_per_day: a daily request cap per key and model, enforced: a
        429 "requests per day (RPD)" once it is spent (it refills at its
        limit a day). None (the default): no daily cap.
      requests_per_day_headers: report the request headers per day, as Groq
        does (the limit is ``requests_per_day``, or else ``rpm * 1440``).
      send_rate_limit_headers: with False, no ``x-ratelimit-*`` headers at all.
      seed: seeds the faults' random draws, so a run can be repeated.
      charge: how the limiter counts the prompt: ``"chars"`` (a token per 4
        characters, as OpenAI), ``"tokens"`` (its own tokenizer) or a function
        of the request body; see `maxllm_gate.testing.provider_limits`. A
        request charged more than its key's TPM limit gets a 429 "Request too
        large", with no ``retry-after``: it never fits.
      charge_factor: multiplies the prompt part of the charge.

    Faults: `inject` an HTTP error (a 5xx burst, a 429 storm with ``retry-after``),
    `inject_hang` and `inject_reset` (a silent or a broken connection, also in the
    middle of a stream), `revoke` a key. `request_sends` counts the calls of each
    ``x-client-request-id``, so a test can tell how often a request arrived twice.

    Serve it with ``url = await tg.start(fake.serve)`` or ``async with
    fake.running()``; point clients at `url`. `stats` counts per key
    fingerprint (``usage.prompt_tokens`` by the provider's tokenizer, and
    ``charged_tokens``, what its limiter debited); `connections` counts the TCP
    connections accepted.

    Raises:
      ValueError: an unknown ``token_accounting`` or ``charge``, or a
        ``burst_window`` or ``charge_factor`` that is not positive.
    """

    def __init__(
        self,
        *,
        limits: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
        default_limits: tuple[float, float] | None = None,
        burst_window: float = 1.0,
        latency: float | Callable[[], float] = 0.0,
        seconds_per_token: float = 0.0,
        completion_tokens: int = 16,
        token_accounting: str = "admission",
        error_rate: float = 0.0,
        hang_rate: float = 0.0,
        requests_per_day: float | None = None,
        requests_per_day_headers: bool = False,
        send_rate_limit_headers: bool = True,
        seed: int = 0,
        charge: str | Callable[[Mapping[str, Any]], float] = "chars",
        charge_factor: float = 1.0,
    ) -> None:
        if token_accounting not in ("admission", "usage"):
            raise ValueError(
                f"token_accounting must be 'admission' or 'usage', not {token_accounting!r}"
            )
        if burst_window <= 0:
            raise ValueError("burst_window must be positive")
        self._limits = {key: dict(models) for key, models in (limits or {}).items()}
        self._default_limits = default_limits
        self.burst_window = burst_window
        self._latency = latency
        self.seconds_per_token = seconds_per_token
        self.completion_tokens = completion_tokens
        self.token_accounting = token_accounting
        self.error_rate = error_rate
        self.hang_rate = hang_rate
        self.requests_per_day = requests_per_day
        self.requests_per_day_headers = requests_per_day_headers
        self.send_rate_limit_headers = send_rate_limit_headers
        self.charge = ChargeRule(charge, charge_factor)
        self._rng = random.Random(seed)
        self._stats: dict[str, _KeyStats] = {}
        self._meters: dict[tuple[str, str], ModelLimiter | None] = {}
        self._revoked: set[str] = set()
        self._injections: list[_Injection] = []
        self._cuts: list[_Cut] = []
        #: Calls per ``x-client-request-id`` header (retries of one request share it).
        self.request_sends: collections.Counter[str] = collections.Counter()
        self._ids = itertools.count(1)
        self._faults = itertools.count()  # alternates 500 and 503
        self._url: str | None = None
        self.connections = 0  # TCP connections accepted: keep-alive keeps this low
        self._routes = {
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/embeddings": ("POST", self._embeddings),
            "/v1/models": ("GET", self._models),
            "/stats": ("GET", self._stats_page),
        }

    # -- control and inspection ----------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/v1`` once serving (the base URL for OpenAI clients)."""
        if self._url is None:
            raise RuntimeError("FakeProvider is not serving yet: start serve() first")
        return self._url

    def revoke(self, api_key: str) -> None:
        """From now on, answer every call with ``api_key`` with a 401."""
        self._revoked.add(api_key)

    def inject(
        self,
        status: int,
        *,
        times: int = 1,
        api_key: str | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` calls (with ``api_key``, or any key) with ``status``.

        ``body`` defaults to an OpenAI error for that status. The answer carries
        the key's rate-limit headers (nothing is charged), overridden by
        ``headers``. Injected 429s count as faults, not in `rate_limited`::

            fake.inject(429, body={"error": {"code": "insufficient_quota", ...}})
        """
        if body is None:
            type_, code = _DEFAULT_ERRORS.get(status, ("api_error", None))
            raw = _error(f"Injected error {status}", type_, code)
        else:
            raw = json.dumps(body).encode()
        lowered = {name.lower(): value for name, value in (headers or {}).items()}
        self._injections.append(_Injection(status, times, api_key, raw, lowered))

    def inject_hang(self, *, times: int = 1, api_key: str | None = None) -> None:
        """Admit (and charge) the next ``times`` calls, then never answer them: the
        connection stays open, silent, until the client gives up and hangs up."""
        self._cuts.append(_Cut("hang", times, api_key))

    def inject_reset(
        self, *, times: int = 1, api_key: str | None = None, after_chunks: int = 0
    ) -> None:
        """Admit (and charge) the next ``times`` calls, then drop their connection with
        a TCP reset: a stream after ``after_chunks`` chunks of text, a plain call
        before any answer. The client sees a broken connection, not an HTTP error."""
        self._cuts.append(_Cut("reset", times, api_key, after_chunks))

    @property
    def duplicates(self) -> int:
        """Request ids (``x-client-request-id``) that arrived more than once."""
        return sum(1 for n in self.request_sends.values() if n > 1)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per key fingerprint (see `key_fingerprint`); never the raw keys."""
        return {fp: attrs.asdict(stats) for fp, stats in self._stats.items()}

    def stats_for(self, api_key: str) -> dict[str, int]:
        """The counters of one key (all zero if it never called)."""
        return attrs.asdict(self._stats.get(key_fingerprint(api_key), _KeyStats()))

    @property
    def rate_limited(self) -> int:
        """429s answered because a limit was reached, over all keys (not injected ones)."""
        return sum(s.rate_limited for s in self._stats.values())

    @property
    def accepted(self) -> int:
        """Calls admitted by the buckets, over all keys."""
        return sum(s.accepted for s in self._stats.values())

    # -- serving -------------------------------------------------------------------------

    async def serve(
        self,
        *,
        port: int = 0,
        task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on 127.0.0.1 (a free port by default) until cancelled.

        Reports the base URL when listening: ``url = await tg.start(fake.serve)``.
        """
        if self._url is not None:
            raise RuntimeError("FakeProvider is already serving")
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
        async with listener:
            bound = listener.extra(anyio.abc.SocketAttribute.local_port)
            self._url = f"http://127.0.0.1:{bound}/v1"
            try:
                task_status.started(self._url)
                await listener.serve(self._serve_connection)
            finally:
                self._url = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeProvider]:
        """Serve in the background for the ``async with`` block; stop when it ends.

        ::

            async with FakeProvider(default_limits=(600, 100_000)).running() as fake:
                ...  # fake.url is ready
        """
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            await tg.start(self.serve)
            try:
                yield self
            except Exception as exc:
                # Raised again outside the task group, so that it is not wrapped in an
                # ExceptionGroup (trio wraps even the host's exceptions).
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        await serve_connection(stream, self._handle)

    async def _handle(self, request: Request, http: Connection) -> None:
        route = self._routes.get(request.path.rstrip("/"))
        if route is None:
            body = _error(
                f"Unknown request URL: {request.method} {request.path}.",
                "invalid_request_error",
                "unknown_url",
            )
            await http.respond(404, [_JSON], body)
        elif request.method != route[0]:
            body = _error(f"Method {request.method} not allowed.", "invalid_request_error", None)
            await http.respond(405, [_JSON, ("allow", route[0])], body)
        else:
            await route[1](request, http)

    async def _models(self, request: Request, http: Connection) -> None:
        names = sorted({m for models in self._limits.values() for m in models} - {_ANY_MODEL})
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in names]
        await http.respond(200, [_JSON], json.dumps({"object": "list", "data": data}).encode())

    async def _stats_page(self, request: Request, http: Connection) -> None:
        await http.respond(200, [_JSON], json.dumps(self.stats()).encode())

    # -- chat completions ----------------------------------------------------------------

    async def _chat(self, request: Request, http: Connection) -> None:
        await self._serve(request, http, _parse_chat(request.body), self._answer)

    async def _embeddings(self, request: Request, http: Connection) -> None:
        await self._serve(request, http, _parse_embeddings(request.body), self._answer_embeddings)

    async def _serve(
        self,
        request: Request,
        http: Connection,
        parsed: dict[str, Any] | bytes,
        answer: Callable[[Connection, _Chat, _Headers, _KeyStats], Awaitable[None]],
    ) -> None:
        """Admit a call, ``answer`` it, then settle what it was charged."""
        admitted = await self._admit(request, http, parsed)
        if admitted is None:
            return
        call, headers, stats = admitted
        try:
            await answer(http, call, headers, stats)
        finally:
            self._settle(call, stats)

    async def _admit(
        self, request: Request, http: Connection, parsed: dict[str, Any] | bytes
    ) -> tuple[_Chat, _Headers, _KeyStats] | None:
        """Authenticate, inject, check and charge a call; None once it was answered."""
        api_key = _bearer(request.headers.get("authorization", ""))
        request_id = request.headers.get("x-client-request-id")
        if request_id:
            self.request_sends[request_id] += 1
        model = parsed.get("model") if isinstance(parsed, dict) else None
        if api_key is None or not self._known(api_key) or api_key in self._revoked:
            if api_key is not None:
                self._count(api_key, "calls", "faults")
            message = "Incorrect API key provided." if api_key else "You didn't provide an API key."
            body = _error(message, "invalid_request_error", "invalid_api_key")
            await http.respond(401, [_JSON], body)
            return None
        stats = self._count(api_key, "calls")
        meter = self._meter(api_key, model) if isinstance(model, str) else None
        now = anyio.current_time()
        injection = self._take_injection(api_key)
        if injection is not None:
            stats.faults += 1
            merged = dict([_JSON, *self._rate_headers(meter, now)]) | dict(injection.headers)
            await http.respond(injection.status, list(merged.items()), injection.body)
            return None
        if isinstance(parsed, bytes):
            await http.respond(400, [_JSON, *self._rate_headers(meter, now)], parsed)
            return None
        call = self._make_call(api_key, parsed, meter)
        if meter is not None:
            wait = meter.admit(now, call.charge)
            if wait > 0:
                stats.rate_limited += 1
                await self._refuse(http, call, meter, now, wait)
                return None
            stats.charged_tokens += call.charge
        # Headers describe the buckets right after this call's charge, as OpenAI's do.
        headers = self._rate_headers(meter, now)
        stats.accepted += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        return call, headers, stats

    async def _answer(
        self, http: Connection, call: _Chat, headers: _Headers, stats: _KeyStats
    ) -> None:
        draw = self._rng.random()
        latency = self._latency() if callable(self._latency) else self._latency
        cut = self._take_cut(call.api_key)
        if cut is not None:
            stats.faults += 1
            if cut.kind == "hang" or not call.stream or cut.after_chunks <= 0:
                await anyio.sleep(latency)
                if cut.kind == "hang":
                    await anyio.sleep_forever()  # until the client hangs up
                await http.reset()
                return
        elif draw < self.error_rate + self.hang_rate:
            await self._fail_at_random(http, draw, latency, headers, stats)
            return
        if not call.stream:
            await anyio.sleep(latency + self.seconds_per_token * call.completion)
            call.answered = True
            await http.respond(200, [_JSON, *headers], json.dumps(self._completion(call)).encode())
            call.delivered = call.completion
            return
        await anyio.sleep(latency)
        call.answered = True
        await http.start_response(
            200, [("content-type", "text/event-stream"), ("cache-control", "no-cache"), *headers]
        )
        chunk_id, created = self._new_id(), int(time.time())
        left = call.completion
        sent = 0
        while True:
            n = min(_CHUNK_TOKENS, left)
            await anyio.sleep(self.seconds_per_token * n)
            left -= n
            delta = (
                {"role": "assistant", "content": _WORD * n}
                if not call.delivered
                else {"content": _WORD * n}
            )
            choice = {
                "index": 0,
                "delta": delta,
                "finish_reason": _finish(call) if not left else None,
            }
            await http.send_data(_sse(_chunk(chunk_id, created, call, [choice])))
            call.delivered += n
            sent += 1
            if cut is not None and sent >= cut.after_chunks:
                await http.reset()
                return
            if not left:
                break
        if call.include_usage:
            chunk = _chunk(chunk_id, created, call, []) | {"usage": _usage(call)}
            await http.send_data(_sse(chunk))
        await http.send_data(b"data: [DONE]\n\n")
        await http.end_response()

    async def _fail_at_random(
        self, http: Connection, draw: float, latency: float, headers: _Headers, stats: _KeyStats
    ) -> None:
        """An ``error_rate`` fault (a 500 or a 503) or a ``hang_rate`` one, by ``draw``."""
        stats.faults += 1
        await anyio.sleep(latency)
        if draw >= self.error_rate:
            await anyio.sleep_forever()  # a hang: only the client giving up ends it
        status = 503 if next(self._faults) % 2 else 500
        kind = "The server had an error while processing your request."
        await http.respond(status, [_JSON, *headers], _error(kind, "server_error", None))

    async def _answer_embeddings(
        self, http: Connection, call: _Chat, headers: _Headers, stats: _KeyStats
    ) -> None:
        draw = self._rng.random()
        latency = self._latency() if callable(self._latency) else self._latency
        cut = self._take_cut(call.api_key)
        if cut is not None:
            stats.faults += 1
            await anyio.sleep(latency)
            if cut.kind == "hang":
                await anyio.sleep_forever()  # until the client hangs up
            await http.reset()
            return
        if draw < self.error_rate + self.hang_rate:
            await self._fail_at_random(http, draw, latency, headers, stats)
            return
        await anyio.sleep(latency)
        call.answered = True
        body = call.body
        dimensions = embedding_dimensions(body)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(embedding_inputs(body)):
            vector: Any = fake_vector(item, dimensions)
            if as_base64:
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        answer = {
            "object": "list",
            "data": data,
            "model": call.model,
            "usage": {"prompt_tokens": call.prompt, "total_tokens": call.prompt},
        }
        await http.respond(200, [_JSON, *headers], json.dumps(answer).encode())

    def _completion(self, call: _Chat) -> dict[str, Any]:
        return {
            "id": self._new_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _WORD * call.completion},
                    "finish_reason": _finish(call),
                }
            ],
            "usage": _usage(call),
        }

    async def _refuse(
        self, http: Connection, call: _Chat, meter: ModelLimiter, now: float, wait: float
    ) -> None:
        if wait == math.inf:  # larger than the TPM limit: no wait would make it fit
            message = too_large_message(call.model, meter.tpm, call.charge)
            headers = [_JSON, *self._rate_headers(meter, now)]
            await http.respond(429, headers, _error(message, "tokens", "rate_limit_exceeded"))
            return
        # Name the dimension that holds the call back longer, as OpenAI's message does.
        holding_back = meter.holding_back(now, call.charge)
        if holding_back == "tokens":
            kind, unit, bucket = "tokens", "tokens per min (TPM)", meter.tokens
            requested, limit = call.charge, meter.tpm
        elif holding_back == "day" and meter.day is not None:
            kind, unit, bucket = "requests", "requests per day (RPD)", meter.day
            requested, limit = 1, meter.rpd
        else:
            kind, unit, bucket = "requests", "requests per min (RPM)", meter.requests
            requested, limit = 1, meter.rpm
        used = math.ceil(bucket.capacity - bucket.available(now) - 1e-9)
        message = (
            f"Rate limit reached for {call.model} in organization org-fake on {unit}: "
            f"Limit {_number(limit)}, Used {used}, Requested {requested}. "
            f"Please try again in {_header_duration(wait)}."
        )
        headers = [
            _JSON,
            ("retry-after", str(max(1, math.ceil(wait - 1e-9)))),
            ("retry-after-ms", str(math.ceil(wait * 1000 - 1e-6))),
            *self._rate_headers(meter, now),
        ]
        await http.respond(429, headers, _error(message, kind, "rate_limit_exceeded"))

    def _settle(self, call: _Chat, stats: _KeyStats) -> None:
        stats.in_flight -= 1
        if call.answered:
            stats.prompt_tokens += call.prompt
            stats.completion_tokens += call.delivered
        if self.token_accounting == "usage" and call.meter is not None:
            unused = call.allowance - call.delivered
            call.meter.tokens.give_back(anyio.current_time(), unused)
            stats.charged_tokens -= unused

    # -- state ---------------------------------------------------------------------------

    def _known(self, api_key: str) -> bool:
        return not self._limits or api_key in self._limits or self._default_limits is not None

    def _count(self, api_key: str, *fields: str) -> _KeyStats:
        stats = self._stats.setdefault(key_fingerprint(api_key), _KeyStats())
        for name in fields:
            setattr(stats, name, getattr(stats, name) + 1)
        return stats

    def _meter(self, api_key: str, model: str) -> ModelLimiter | None:
        """The buckets of (api_key, model), or None when that pair is unlimited."""
        try:
            return self._meters[api_key, model]
        except KeyError:
            pass
        models = self._limits.get(api_key, {})
        limits = models.get(model, models.get(_ANY_MODEL, self._default_limits))
        meter = None
        if limits is not None:
            rpm, tpm = limits
            per_day = self.requests_per_day_headers
            rpd = self.requests_per_day
            meter = ModelLimiter(rpm, tpm, self.burst_window, per_day=per_day, rpd=rpd)
        self._meters[api_key, model] = meter
        return meter

    def _take_injection(self, api_key: str) -> _Injection | None:
        for injection in self._injections:
            if injection.api_key in (None, api_key):
                injection.times -= 1
                if injection.times <= 0:
                    self._injections.remove(injection)
                return injection
        return None

    def _take_cut(self, api_key: str) -> _Cut | None:
        for cut in self._cuts:
            if cut.api_key in (None, api_key):
                cut.times -= 1
                if cut.times <= 0:
                    self._cuts.remove(cut)
                return cut
        return None

    def _make_call(self, api_key: str, body: dict[str, Any], meter: ModelLimiter | None) -> _Chat:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_completion_tokens")
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        options = body.get("stream_options") or {}
        return _Chat(
            api_key=api_key,
            model=body["model"],
            prompt=count_tokens(body),
            charge=self.charge(body),
            max_tokens=max_tokens,
            allowance=max_tokens_charge(body),
            completion=max(0, min(self.completion_tokens, max_tokens)),
            stream=bool(body.get("stream")),
            include_usage=bool(body.get("stream")) and bool(options.get("include_usage")),
            meter=meter,
            body=body,
        )

    def _rate_headers(self, meter: ModelLimiter | None, now: float) -> _Headers:
        if meter is None or not self.send_rate_limit_headers:
            return []
        requests, request_limit = meter.requests, meter.rpm
        if meter.day is not None and self.requests_per_day_headers:  # Groq: per day
            requests, request_limit = meter.day, meter.rpd
        tokens = meter.tokens
        return [
            ("x-ratelimit-limit-requests", _number(request_limit)),
            ("x-ratelimit-limit-tokens", _number(meter.tpm)),
            ("x-ratelimit-remaining-requests", str(_floor(requests.available(now)))),
            ("x-ratelimit-remaining-tokens", str(_floor(tokens.available(now)))),
            ("x-ratelimit-reset-requests", _header_duration(requests.seconds_until_full(now))),
            ("x-ratelimit-reset-tokens", _header_duration(tokens.seconds_until_full(now))),
        ]

    def _new_id(self) -> str:
        return f"chatcmpl-fake{next(self._ids):012d}"


_DEFAULT_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _parse_chat(raw: bytes) -> dict[str, Any] | bytes:
    """The request body, checked as far as the fake needs; or the body of a 400."""

    def invalid(message: str, param: str | None = None, code: str | None = None) -> bytes:
        return _error(message, "invalid_request_error", code, param)

    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return invalid("We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return invalid("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return invalid("you must provide a model parameter", "model")
    messages = body.get("messages")
    if messages is None:
        return invalid(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        return invalid(
            "'messages' must be a non-empty array of objects.", "messages", "invalid_type"
        )
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (type(value) is not int or value < 1):
            return invalid(
                f"Invalid '{name}': must be an integer of at least 1.", name, "invalid_value"
            )
    if not isinstance(body.get("stream_options") or {}, dict):
        return invalid("Invalid type for 'stream_options'.", "stream_options", "invalid_type")
    return body


def _parse_embeddings(raw: bytes) -> dict[str, Any] | bytes:
    """An embeddings request body, checked as OpenAI does; or the body of its 400."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _error(
            "We could not parse the JSON body of your request.", "invalid_request_error", None
        )
    if not isinstance(body, dict):
        return _error("The request body must be a JSON object.", "invalid_request_error", None)
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _error("you must provide a model parameter", "invalid_request_error", None, "model")
    if "input" not in body:
        return _error(
            "Missing required parameter: 'input'.",
            "invalid_request_error",
            "missing_required_parameter",
            "input",
        )
    if body.get("encoding_format", "float") not in ("float", "base64"):
        return _error(
            "Invalid value for 'encoding_format': must be 'float' or 'base64'.",
            "invalid_request_error",
            "invalid_value",
            "encoding_format",
        )
    problem = embedding_request_problem(body)
    if problem is not None:
        message, param = problem
        return _error(message, "invalid_request_error", None, param)
    return body


def _finish(call: _Chat) -> str:
    return "length" if call.completion >= call.max_tokens else "stop"


def _usage(call: _Chat) -> dict[str, int]:
    completion = call.delivered if call.stream else call.completion
    return {
        "prompt_tokens": call.prompt,
        "completion_tokens": completion,
        "total_tokens": call.prompt + completion,
    }


def _chunk(chunk_id: str, created: int, call: _Chat, choices: list[Any]) -> dict[str, Any]:
    chunk = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": call.model,
        "choices": choices,
    }
    if call.include_usage:
        chunk["usage"] = None  # OpenAI sends a null usage in every chunk but the last
    return chunk


def _sse(data: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


# -- command line ---------------------------------------------------------------------------


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m maxllm_gate.testing.fake_provider",
        description="Serve a fake OpenAI-compatible provider on 127.0.0.1 until killed.",
    )
    add = parser.add_argument
    add("--port", type=int, default=0, help="0 picks a free port (default)")
    add("--rpm", type=float, help="requests per minute enforced per key and model")
    add("--tpm", type=float, help="tokens per minute enforced per key and model")
    add("--burst-window", type=float, default=1.0, help="seconds of each limit a bucket holds")
    add("--latency", type=float, default=0.0, help="seconds before the first byte")
    add("--seconds-per-token", type=float, default=0.0)
    add("--completion-tokens", type=int, default=16)
    add("--keys", default="", help="comma-separated API keys; others get a 401 (default: any)")
    add("--models", default="", help="comma-separated models listed by /v1/models (default: any)")
    add(
        "--limits",
        default="",
        help="JSON {api_key: {model: [rpm, tpm]}}, per key (overrides --keys/--rpm/--tpm)",
    )
    add("--token-accounting", choices=["admission", "usage"], default="admission")
    add(
        "--charge",
        choices=["chars", "tokens"],
        default="chars",
        help="how the limiter counts a prompt: a token per 4 characters (default) or its tokenizer",
    )
    add("--charge-factor", type=float, default=1.0, help="multiplies the prompt part of a charge")
    add("--error-rate", type=float, default=0.0)
    add("--hang-rate", type=float, default=0.0)
    add("--requests-per-day", type=float, help="a daily request cap per key and model")
    add("--requests-per-day-headers", action="store_true", help="Groq-style request headers")
    add("--no-rate-limit-headers", action="store_true")
    add("--seed", type=int, default=0)
    add("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    if (args.rpm is None) != (args.tpm is None):
        parser.error("give both --rpm and --tpm, or neither (unlimited)")
    return args


@contextlib.contextmanager
def fake_provider_process(
    *args: str, preexec_fn: Callable[[], object] | None = None
) -> Iterator[str]:
    """Run the fake provider in a process of its own, as a real provider is.

    ``args`` are this module's command-line options (``"--limits", "{...}"``);
    ``preexec_fn`` runs in the child before it starts (e.g. to raise its priority).
    Yields the base URL once it serves; terminates the process on exit.

    Raises:
      RuntimeError: the process did not start serving.
    """
    command = [sys.executable, "-m", "maxllm_gate.testing.fake_provider", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("URL "):
            raise RuntimeError(f"the fake provider did not start: {line!r}")
        yield line.split(" ", 1)[1]
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fake provider from the command line; prints ``URL <base url>`` when ready."""
    args = _arguments(argv)
    keys = [k for k in args.keys.split(",") if k]
    models = [m for m in args.models.split(",") if m] or [_ANY_MODEL]
    rates: tuple[float, float] | None = None
    if args.rpm is not None:
        rates = (args.rpm, args.tpm)
    # Listed keys are the only ones accepted; an empty model table leaves a key unlimited.
    limits: dict[str, dict[str, tuple[float, float]]] = {
        key: dict.fromkeys(models, rates) if rates else {} for key in keys
    }
    if args.limits:
        limits = {
            key: {model: (float(rpm), float(tpm)) for model, (rpm, tpm) in table.items()}
            for key, table in json.loads(args.limits).items()
        }
    fake = FakeProvider(
        limits=limits or None,
        default_limits=rates if not limits else None,
        burst_window=args.burst_window,
        latency=args.latency,
        seconds_per_token=args.seconds_per_token,
        completion_tokens=args.completion_tokens,
        token_accounting=args.token_accounting,
        error_rate=args.error_rate,
        hang_rate=args.hang_rate,
        requests_per_day=args.requests_per_day,
        requests_per_day_headers=args.requests_per_day_headers,
        send_rate_limit_headers=not args.no_rate_limit_headers,
        seed=args.seed,
        charge=args.charge,
        charge_factor=args.charge_factor,
    )

    async def run() -> None:
        # SIGINT and SIGTERM stop the server cleanly (exit status 0) under both backends.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                url = await tg.start(functools.partial(fake.serve, port=args.port))
                print(f"URL {url}", flush=True)
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break

    anyio.run(run, backend=args.backend)


if __name__ == "__main__":
    main(sys.argv[1:])
