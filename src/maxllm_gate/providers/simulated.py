"""A simulated provider, in process, that enforces limits the way OpenAI does.

It needs no network and no keys, and it runs on whatever clock the event loop
has, so under trio's ``MockClock`` hours of traffic take milliseconds. Each key
gets its own RPM and TPM buckets per model: continuous refill, room for
``burst_window`` seconds of the limit, and ``prompt + max_tokens`` charged when
a call is admitted. It counts and enforces with its own model of a provider's
limiter, `maxllm_gate.testing.provider_limits`, never with the client's code:
by default the prompt is charged by its characters, as OpenAI does. A call
that does not fit is answered with a 429 and counted; a gate that works never
sees one. It serves embeddings too (:meth:`SimulatedProvider.embed`):
deterministic unit vectors derived from each input, charged their input only.

    provider = SimulatedProvider(latency=0.5, completion_tokens=40)
    client = maxllm_gate(keys=[...], provider=provider)
    ...
    assert provider.rate_limited == 0
"""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from maxllm_gate.errors import (
    AuthenticationError,
    BadRequestError,
    ProviderError,
    RateLimitError,
)
from maxllm_gate.providers.base import (
    ProviderCall,
    ProviderEmbedding,
    ProviderResponse,
    StreamChunk,
)
from maxllm_gate.responses import Usage
from maxllm_gate.testing import provider_limits
from maxllm_gate.testing.provider_limits import ChargeRule, ModelLimiter

__all__ = ["SimulatedKeyStats", "SimulatedProvider"]

_WORD = "lorem "  # one token of generated text
_CHUNK_TOKENS = 4  # tokens per streamed chunk


@attrs.define
class SimulatedKeyStats:
    """What the simulated provider saw from one key."""

    calls: int = 0
    accepted: int = 0
    rate_limited: int = 0
    faults: int = 0
    hung: int = 0
    prompt_tokens: int = 0  # as reported in usage: the provider's own tokenizer count
    completion_tokens: int = 0
    charged_tokens: int = 0  # debited by the limiter for admitted calls, less refunds


@attrs.define
class _Fault:
    error: ProviderError | None  # None: a hang
    times: int
    key_id: str | None


class SimulatedProvider:
    """An OpenAI-like provider in process, with limits, latency and injectable faults.

    Args:
      latency: seconds before the answer (a number, or a function of the call).
      seconds_per_token: extra seconds per completion token (paces streams too).
      completion_tokens: tokens generated per call (a number or a function of
        the call), never more than the call's ``max_tokens``.
      burst_window: seconds of the limit each bucket holds (1 = OpenAI's
        quantized enforcement, 60 = a full minute of burst).
      token_accounting: ``"admission"`` keeps the ``prompt + max_tokens``
        charge; ``"usage"`` refunds the unused completion when the call ends.
      limits: ``{key_id: {model: (rpm, tpm)}}`` to enforce instead of the
        limits the calling key is configured with (e.g. lower real limits).
      enforce: with False, never answer 429 (an unlimited provider).
      send_headers: send OpenAI's ``x-ratelimit-*`` headers, as OpenAI does.
      charge: how the limiter counts the prompt: ``"chars"`` (a token per 4
        characters, as OpenAI), ``"tokens"`` (its own tokenizer) or a function
        of the request body; see `maxllm_gate.testing.provider_limits`.
      charge_factor: multiplies the prompt part of the charge.

    Faults: :meth:`inject` an error, :meth:`hang` calls, :meth:`revoke` a key.
    ``sends`` counts how many times each request id arrived, so a test can tell
    a retry of an answered call from a request executed twice. A call charged
    more than its key's TPM limit raises a `RateLimitError` "Request too large"
    with no ``retry_after``: it never fits. ``stats`` counts per key, with
    ``prompt_tokens`` by the provider's own tokenizer (what ``usage`` reports)
    and ``charged_tokens``, what its limiter debited.

    Raises:
      ValueError: an unknown ``charge`` rule, or a ``charge_factor`` that is not positive.
    """

    def __init__(
        self,
        *,
        latency: float | Callable[[ProviderCall], float] = 0.0,
        seconds_per_token: float = 0.0,
        completion_tokens: int | Callable[[ProviderCall], int] = 16,
        burst_window: float = 1.0,
        token_accounting: str = "admission",
        limits: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
        enforce: bool = True,
        send_headers: bool = True,
        charge: str | Callable[[Mapping[str, Any]], float] = "chars",
        charge_factor: float = 1.0,
    ) -> None:
        self.charge = ChargeRule(charge, charge_factor)
        self._latency = latency
        self.seconds_per_token = seconds_per_token
        self._completion_tokens = completion_tokens
        self.burst_window = burst_window
        self.token_accounting = token_accounting
        self._limits = limits or {}
        self.enforce = enforce
        self.send_headers = send_headers
        self.stats: collections.defaultdict[str, SimulatedKeyStats] = collections.defaultdict(
            SimulatedKeyStats
        )
        self._buckets: dict[tuple[str, str], ModelLimiter] = {}
        self._faults: list[_Fault] = []
        self._revoked: set[str] = set()
        #: How many times each request id reached the provider (retries included).
        self.sends: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0

    # -- faults -----------------------------------------------------------------------

    def inject(self, error: ProviderError, *, times: int = 1, key_id: str | None = None) -> None:
        """Answer the next ``times`` calls (on ``key_id``, or any key) with ``error``."""
        self._faults.append(_Fault(error, times, key_id))

    def hang(self, *, times: int = 1, key_id: str | None = None) -> None:
        """Never answer the next ``times`` calls (on ``key_id``, or any key), until
        the caller gives up; like a connection that stays open with no reply."""
        self._faults.append(_Fault(None, times, key_id))

    def revoke(self, key_id: str) -> None:
        """From now on, answer every call with ``key_id`` with a 401."""
        self._revoked.add(key_id)

    @property
    def duplicates(self) -> int:
        """Request ids that reached the provider more than once."""
        return sum(1 for n in self.sends.values() if n > 1)

    @property
    def rate_limited(self) -> int:
        """429s answered, over all keys."""
        return sum(s.rate_limited for s in self.stats.values())

    @property
    def accepted(self) -> int:
        return sum(s.accepted for s in self.stats.values())

    # -- the provider protocol ----------------------------------------------------------

    async def complete(self, call: ProviderCall) -> ProviderResponse:
        usage, headers = await self._admit(call)
        try:
            latency = self._call_latency(call, usage.completion_tokens)
            if latency > 0:
                await anyio.sleep(latency)
        finally:
            self._done(call, usage)
        return ProviderResponse(
            content=_WORD * usage.completion_tokens,
            finish_reason="length" if usage.completion_tokens >= _max_tokens(call) else "stop",
            usage=usage,
            model=call.model,
            headers=headers,
        )

    async def open_stream(self, call: ProviderCall) -> _SimulatedStream:
        usage, headers = await self._admit(call)
        return _SimulatedStream(self, call, usage, headers)

    async def embed(self, call: ProviderCall) -> ProviderEmbedding:
        """One vector per input (`provider_limits.fake_vector`), of the asked
        ``dimensions``; over OpenAI's per-request limits, a 400 as OpenAI words it."""
        usage, headers = await self._admit(call)
        try:
            latency = self._call_latency(call, 0)
            if latency > 0:
                await anyio.sleep(latency)
        finally:
            self._done(call, usage)
        body = _body(call)
        dimensions = provider_limits.embedding_dimensions(body)
        vectors = [
            provider_limits.fake_vector(item, dimensions)
            for item in provider_limits.embedding_inputs(body)
        ]
        return ProviderEmbedding(vectors=vectors, usage=usage, model=call.model, headers=headers)

    async def aclose(self) -> None:
        pass

    # -- internals ------------------------------------------------------------------------

    async def _admit(self, call: ProviderCall) -> tuple[Usage, dict[str, str]]:
        await anyio.lowlevel.checkpoint()
        stats = self.stats[call.key_id]
        stats.calls += 1
        self.sends[call.request_id] += 1
        if call.key_id in self._revoked:
            stats.faults += 1
            raise AuthenticationError("invalid api key", status_code=401)
        for fault in self._faults:
            if fault.times > 0 and fault.key_id in (None, call.key_id):
                fault.times -= 1
                stats.faults += 1
                self._faults = [f for f in self._faults if f.times > 0]
                if fault.error is not None:
                    raise fault.error
                stats.hung += 1
                await anyio.sleep_forever()
        body = _body(call)
        if call.input is not None:
            problem = provider_limits.embedding_request_problem(body)
            if problem is not None:
                stats.faults += 1
                message, param = problem
                raise BadRequestError(
                    message, status_code=400, code="invalid_request_error", param=param
                )
        charge = self.charge(body)
        headers: dict[str, str] = {}
        if self.enforce:
            limiter = self._limiter(call)
            now = anyio.current_time()
            wait = limiter.admit(now, charge)
            headers = self._headers(limiter, now)
            if wait == math.inf:
                stats.rate_limited += 1
                error = RateLimitError(
                    provider_limits.too_large_message(call.model, limiter.tpm, charge),
                    status_code=429,
                    headers=headers,
                    code="rate_limit_exceeded",
                )
                error.dimension = "tokens"
                raise error
            if wait > 0:
                stats.rate_limited += 1
                error = RateLimitError(
                    "rate limit reached",
                    status_code=429,
                    retry_after=wait,
                    headers={"retry-after": f"{math.ceil(wait)}", **headers},
                )
                error.dimension = limiter.holding_back(now, charge)  # as OpenAI's `type` says
                raise error
            stats.charged_tokens += charge
        completion = self._completion_tokens
        generated = completion(call) if callable(completion) else completion
        if call.input is not None:
            generated = 0  # an embedding generates no text
        stats.accepted += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        prompt = provider_limits.count_tokens(body)  # usage: the provider's own count
        return Usage(prompt, max(0, min(generated, _max_tokens(call)))), headers

    def _headers(self, limiter: ModelLimiter, now: float) -> dict[str, str]:
        """OpenAI's rate-limit headers for ``limiter``, if this provider sends them."""
        if not self.send_headers:
            return {}
        requests, tokens = limiter.requests, limiter.tokens
        return {
            "x-ratelimit-limit-requests": f"{limiter.rpm:g}",
            "x-ratelimit-limit-tokens": f"{limiter.tpm:g}",
            "x-ratelimit-remaining-requests": str(math.floor(requests.available(now))),
            "x-ratelimit-remaining-tokens": str(math.floor(tokens.available(now))),
            "x-ratelimit-reset-requests": f"{requests.seconds_until_full(now):.3f}s",
            "x-ratelimit-reset-tokens": f"{tokens.seconds_until_full(now):.3f}s",
        }

    def _done(self, call: ProviderCall, usage: Usage) -> None:
        self.in_flight -= 1
        stats = self.stats[call.key_id]
        stats.prompt_tokens += usage.prompt_tokens
        stats.completion_tokens += usage.completion_tokens
        if self.enforce and self.token_accounting == "usage":
            unused = provider_limits.max_tokens_charge(_body(call)) - usage.completion_tokens
            self._limiter(call).tokens.give_back(anyio.current_time(), unused)
            stats.charged_tokens -= unused

    def _limiter(self, call: ProviderCall) -> ModelLimiter:
        limiter = self._buckets.get((call.key_id, call.model))
        if limiter is None:
            override = self._limits.get(call.key_id, {}).get(call.model)
            if override is not None:
                rpm, tpm = override
            else:
                configured = call.key.models[call.model]
                rpm, tpm = configured.rpm_limit, configured.tpm_limit
            limiter = provider_limits.ModelLimiter(rpm, tpm, self.burst_window)
            self._buckets[call.key_id, call.model] = limiter
        return limiter

    def _call_latency(self, call: ProviderCall, completion_tokens: int) -> float:
        latency = self._latency(call) if callable(self._latency) else self._latency
        return latency + self.seconds_per_token * completion_tokens


def _body(call: ProviderCall) -> dict[str, Any]:
    """The request as it would go on the wire, which is what a provider counts."""
    if call.input is not None:
        return {**call.params, "model": call.model, "input": call.input}
    return {**call.params, "model": call.model, "messages": call.messages}


def _max_tokens(call: ProviderCall) -> int:
    """The completion limit of one choice: ``max_tokens``, else ``max_completion_tokens``."""
    value: Any = call.params.get("max_tokens")
    if value is None:
        value = call.params.get("max_completion_tokens")
    return int(value) if value is not None else 1024


class _SimulatedStream:
    """The chunks of one simulated streamed completion."""

    def __init__(
        self,
        provider: SimulatedProvider,
        call: ProviderCall,
        usage: Usage,
        headers: Mapping[str, str],
    ) -> None:
        self.headers = headers
        self._provider = provider
        self._call = call
        self._usage = usage
        self._closed = False
        self._chunks = self._generate()

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self._chunks

    async def _generate(self) -> AsyncIterator[StreamChunk]:
        provider, usage = self._provider, self._usage
        latency = provider._call_latency(self._call, 0)
        await anyio.sleep(latency)
        remaining = usage.completion_tokens
        while remaining > 0 and not self._closed:
            n = min(_CHUNK_TOKENS, remaining)
            await anyio.sleep(provider.seconds_per_token * n)
            remaining -= n
            yield StreamChunk(text=_WORD * n)
        finish = "length" if usage.completion_tokens >= _max_tokens(self._call) else "stop"
        yield StreamChunk(finish_reason=finish, usage=usage)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._provider._done(self._call, self._usage)
            await self._chunks.aclose()  # type: ignore[attr-defined]
