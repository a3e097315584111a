"""`FakeProvider`: the server, which admits each call against its `LimitTable`, answers
it in OpenAI's wire format, injects the `Faults` asked for, and counts per key."""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import attrs

from maxllm_gate.config import key_fingerprint
from maxllm_gate.testing._http import Connection, Request, serve_connection
from maxllm_gate.testing.fake_provider.faults import Cut, Faults
from maxllm_gate.testing.fake_provider.limits import LimitTable
from maxllm_gate.testing.fake_provider.wire import (
    CHUNK_TOKENS,
    DONE,
    JSON,
    STREAM,
    Call,
    Headers,
    bearer,
    completion,
    embeddings,
    error_body,
    parse_chat,
    parse_embeddings,
    text_chunk,
    usage_chunk,
)
from maxllm_gate.testing.provider_limits import (
    DEFAULT_MAX_TOKENS,
    ChargeRule,
    ModelLimiter,
    count_tokens,
    max_tokens_charge,
)

__all__ = ["FakeProvider"]


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
        self.limits = LimitTable(
            limits,
            default_limits,
            burst_window=burst_window,
            requests_per_day=requests_per_day,
            requests_per_day_headers=requests_per_day_headers,
            send_rate_limit_headers=send_rate_limit_headers,
        )
        self.faults = Faults(error_rate=error_rate, hang_rate=hang_rate, seed=seed)
        self._latency = latency
        self.seconds_per_token = seconds_per_token
        self.completion_tokens = completion_tokens
        self.token_accounting = token_accounting
        self.charge = ChargeRule(charge, charge_factor)
        self._stats: dict[str, _KeyStats] = {}
        self._revoked: set[str] = set()
        #: Calls per ``x-client-request-id`` header (retries of one request share it).
        self.request_sends: collections.Counter[str] = collections.Counter()
        self._ids = itertools.count(1)
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
        self.faults.inject(status, times, api_key, body, headers)

    def inject_hang(self, *, times: int = 1, api_key: str | None = None) -> None:
        """Admit (and charge) the next ``times`` calls, then never answer them: the
        connection stays open, silent, until the client gives up and hangs up."""
        self.faults.cut("hang", times, api_key)

    def inject_reset(
        self, *, times: int = 1, api_key: str | None = None, after_chunks: int = 0
    ) -> None:
        """Admit (and charge) the next ``times`` calls, then drop their connection with
        a TCP reset: a stream after ``after_chunks`` chunks of text, a plain call
        before any answer. The client sees a broken connection, not an HTTP error."""
        self.faults.cut("reset", times, api_key, after_chunks)

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
            body = error_body(
                f"Unknown request URL: {request.method} {request.path}.",
                "invalid_request_error",
                "unknown_url",
            )
            await http.respond(404, [JSON], body)
        elif request.method != route[0]:
            body = error_body(
                f"Method {request.method} not allowed.", "invalid_request_error", None
            )
            await http.respond(405, [JSON, ("allow", route[0])], body)
        else:
            await route[1](request, http)

    async def _models(self, request: Request, http: Connection) -> None:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "fake"}
            for name in self.limits.models()
        ]
        await http.respond(200, [JSON], json.dumps({"object": "list", "data": data}).encode())

    async def _stats_page(self, request: Request, http: Connection) -> None:
        await http.respond(200, [JSON], json.dumps(self.stats()).encode())

    # -- chat completions ----------------------------------------------------------------

    async def _chat(self, request: Request, http: Connection) -> None:
        await self._serve(request, http, parse_chat(request.body), self._answer)

    async def _embeddings(self, request: Request, http: Connection) -> None:
        await self._serve(request, http, parse_embeddings(request.body), self._answer_embeddings)

    async def _serve(
        self,
        request: Request,
        http: Connection,
        parsed: dict[str, Any] | bytes,
        answer: Callable[[Connection, Call, Headers, _KeyStats], Awaitable[None]],
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
    ) -> tuple[Call, Headers, _KeyStats] | None:
        """Authenticate, inject, check and charge a call; None once it was answered."""
        api_key = bearer(request.headers.get("authorization", ""))
        request_id = request.headers.get("x-client-request-id")
        if request_id:
            self.request_sends[request_id] += 1
        model = parsed.get("model") if isinstance(parsed, dict) else None
        if api_key is None or not self.limits.knows(api_key) or api_key in self._revoked:
            if api_key is not None:
                self._count(api_key, "calls", "faults")
            message = "Incorrect API key provided." if api_key else "You didn't provide an API key."
            body = error_body(message, "invalid_request_error", "invalid_api_key")
            await http.respond(401, [JSON], body)
            return None
        stats = self._count(api_key, "calls")
        meter = self.limits.meter(api_key, model) if isinstance(model, str) else None
        now = anyio.current_time()
        injection = self.faults.take_injection(api_key)
        if injection is not None:
            stats.faults += 1
            merged = dict([JSON, *self.limits.headers(meter, now)]) | dict(injection.headers)
            await http.respond(injection.status, list(merged.items()), injection.body)
            return None
        if isinstance(parsed, bytes):
            await http.respond(400, [JSON, *self.limits.headers(meter, now)], parsed)
            return None
        call = self._make_call(api_key, parsed, meter)
        if meter is not None:
            wait = meter.admit(now, call.charge)
            if wait > 0:
                stats.rate_limited += 1
                await http.respond(429, *self.limits.refusal(call, meter, now, wait))
                return None
            stats.charged_tokens += call.charge
        # Headers describe the buckets right after this call's charge, as OpenAI's do.
        headers = self.limits.headers(meter, now)
        stats.accepted += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        return call, headers, stats

    async def _answer(
        self, http: Connection, call: Call, headers: Headers, stats: _KeyStats
    ) -> None:
        faulted = await self._inject_faults(http, call, headers, stats, streamed=call.stream)
        if faulted is None:
            return
        latency, cut = faulted
        if not call.stream:
            await anyio.sleep(latency + self.seconds_per_token * call.completion)
            call.answered = True
            body = completion(call, self._new_id(), int(time.time()))
            await http.respond(200, [JSON, *headers], body)
            call.delivered = call.completion
            return
        await anyio.sleep(latency)
        call.answered = True
        await http.start_response(200, [*STREAM, *headers])
        chunk_id, created = self._new_id(), int(time.time())
        left = call.completion
        sent = 0
        while True:
            n = min(CHUNK_TOKENS, left)
            await anyio.sleep(self.seconds_per_token * n)
            left -= n
            await http.send_data(text_chunk(chunk_id, created, call, n, last=not left))
            call.delivered += n
            sent += 1
            if cut is not None and sent >= cut.after_chunks:
                await http.reset()
                return
            if not left:
                break
        if call.include_usage:
            await http.send_data(usage_chunk(chunk_id, created, call))
        await http.send_data(DONE)
        await http.end_response()

    async def _answer_embeddings(
        self, http: Connection, call: Call, headers: Headers, stats: _KeyStats
    ) -> None:
        faulted = await self._inject_faults(http, call, headers, stats, streamed=False)
        if faulted is None:
            return
        latency, _ = faulted
        await anyio.sleep(latency)
        call.answered = True
        await http.respond(200, [JSON, *headers], embeddings(call))

    async def _inject_faults(
        self, http: Connection, call: Call, headers: Headers, stats: _KeyStats, *, streamed: bool
    ) -> tuple[float, Cut | None] | None:
        """Answer ``call`` with its fault, if it draws one now (then None); else its latency,
        and the cut to make in its stream (``streamed``) after some chunks."""
        draw = self.faults.draw()
        latency = self._latency() if callable(self._latency) else self._latency
        cut = self.faults.take_cut(call.api_key)
        if cut is not None:
            stats.faults += 1
            if cut.kind == "hang" or not streamed or cut.after_chunks <= 0:
                await anyio.sleep(latency)
                if cut.kind == "hang":
                    await anyio.sleep_forever()  # until the client hangs up
                await http.reset()
                return None
        elif self.faults.fails(draw):
            stats.faults += 1
            await self.faults.fail(http, draw, latency, headers)
            return None
        return latency, cut

    def _settle(self, call: Call, stats: _KeyStats) -> None:
        stats.in_flight -= 1
        if call.answered:
            stats.prompt_tokens += call.prompt
            stats.completion_tokens += call.delivered
        if self.token_accounting == "usage" and call.meter is not None:
            unused = call.allowance - call.delivered
            call.meter.tokens.give_back(anyio.current_time(), unused)
            stats.charged_tokens -= unused

    # -- state ---------------------------------------------------------------------------

    def _count(self, api_key: str, *fields: str) -> _KeyStats:
        stats = self._stats.setdefault(key_fingerprint(api_key), _KeyStats())
        for name in fields:
            setattr(stats, name, getattr(stats, name) + 1)
        return stats

    def _make_call(self, api_key: str, body: dict[str, Any], meter: ModelLimiter | None) -> Call:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_completion_tokens")
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        options = body.get("stream_options") or {}
        return Call(
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

    def _new_id(self) -> str:
        return f"chatcmpl-fake{next(self._ids):012d}"
