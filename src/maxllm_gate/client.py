"""The public client, ``maxllm_gate``: a thin facade that wires the parts together.

The work happens in the actors (:mod:`maxllm_gate.actors`); this module only
validates and prices a request, hands it to the dispatcher, and waits for its
one outcome.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from random import Random
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel

from maxllm_gate import _report as report
from maxllm_gate._host import HostTask
from maxllm_gate._logging import get_logger, register_secret
from maxllm_gate.actors import Dispatcher, Job, KeyActor, Supervisor
from maxllm_gate.config import KeyConfig, config_from_env, maxllm_gate_config, url_secrets
from maxllm_gate.embeddings import check_request_limits, embedding_inputs, input_size
from maxllm_gate.errors import (
    ConfigError,
    RequestTimeoutError,
    ShutdownError,
    ValidationError,
    show_value,
)
from maxllm_gate.limits import Cost, PromptSize
from maxllm_gate.limits.charge import prompt_characters
from maxllm_gate.priority import PRIORITIES, PRIORITY_LEVELS
from maxllm_gate.providers.base import EmbeddingInput, Provider
from maxllm_gate.responses import ChatResponse, EmbeddingResponse
from maxllm_gate.state import MemoryState, StateBackend
from maxllm_gate.strategies import make_strategy
from maxllm_gate.streams import ChatStream
from maxllm_gate.tokens import TokenEstimator
from maxllm_gate.validation import (
    ChatMessage,
    build_chat_request,
    check_routing_parameters,
    is_valid_timeout,
)

if TYPE_CHECKING:
    from maxllm_gate.state.hybrid import HybridRateLimiter

__all__ = ["maxllm_gate"]

log = get_logger("maxllm_gate.client")

# (max_tokens not given, temperature not given) -> the params filled in from the config.
_DEFAULTED = {
    (False, False): frozenset(),
    (True, False): frozenset({"max_tokens"}),
    (False, True): frozenset({"temperature"}),
    (True, True): frozenset({"max_tokens", "temperature"}),
}

Messages = str | Sequence[Mapping[str, Any] | ChatMessage]


class maxllm_gate:
    """A rate-limit-aware LLM client over several API keys.

    Use it as an async context manager, from asyncio or trio::

        async with maxllm_gate.from_env() as client:
            response = await client.chat("gpt-4o-mini", "Hello!")

    Args:
      config: the settings; defaults to :class:`~maxllm_gate.config.maxllm_gate_config()`.
      keys: the keys to use (``KeyConfig`` or dicts); replaces ``config.keys``.
      provider: the execution backend for every key. Without it, each key uses
        the built-in transport its ``transport`` (or ``DEFAULT_TRANSPORT``)
        names: ``litellm`` or ``openai_compat``.
      state: where limit state lives. Defaults to process memory.
      seed: seeds every random choice the client makes (retry jitter, request
        ids), so a run on virtual time repeats (see docs/testing.md).
      random: the generator to draw those choices from instead (not with ``seed``).
      **settings: any field of ``maxllm_gate_config`` to override.

    Raises:
      ConfigError: a setting is invalid, or a key's transport cannot reach its
        provider (``openai_compat`` with no known endpoint and no ``api_base``).
    """

    def __init__(
        self,
        config: maxllm_gate_config | None = None,
        *,
        keys: Sequence[KeyConfig | Mapping[str, Any]] | None = None,
        provider: Provider | None = None,
        state: StateBackend | None = None,
        seed: int | None = None,
        random: Random | None = None,
        **settings: Any,
    ) -> None:
        if seed is not None and random is not None:
            raise ConfigError("pass seed or random, not both")
        #: Every random choice of this client draws from it (see ``seed``).
        self._random = random if random is not None else Random(seed)
        config = config or maxllm_gate_config()
        if keys is not None:
            settings["keys"] = keys
        if settings:
            config = config.evolve(**settings)
        self.config = config
        self._provider = provider
        self._transports: dict[str, Provider] = {}  # built-in providers, made on first use
        # A Redis limiter the client makes (from redis_url) is the client's to open and
        # close; a state passed in belongs to the caller.
        self._limiter: HybridRateLimiter | None = None
        if state is None and config.redis_url:
            from maxllm_gate.state.hybrid import HybridRateLimiter

            state = self._limiter = HybridRateLimiter(
                config.redis_url, margin=config.admission_margin
            )
        self._state: StateBackend = state or MemoryState(margin=config.admission_margin)
        self._estimator = TokenEstimator(config.token_estimation_buffer)
        self._strategy = make_strategy(config.strategy)
        self._dispatcher = Dispatcher(
            strategy=self._strategy,
            max_queue_size=config.max_queue_size,
            priority_aging=config.priority_aging,
        )
        self._supervisor = Supervisor(
            self._dispatcher, restart_base=config.restart_base, restart_max=config.restart_max
        )
        if hasattr(self._state, "stats_source"):  # a HybridRateLimiter shares statistics too
            dispatcher = self._dispatcher
            self._state.stats_source = lambda: dispatcher.actors
        self._state_name = "new"  # -> running -> shutting down -> shut down
        self._starting: anyio.Event | None = None  # set while a task starts the client
        self._host: HostTask | None = None
        self._ids = itertools.count(1)
        self._id_prefix = f"{self._random.getrandbits(24):06x}"
        for secret in url_secrets(config.redis_url):
            register_secret(secret)
        for key in config.keys:
            for secret in (key.api_key, *url_secrets(key.api_base)):
                register_secret(secret)
            self._provider_for(key)  # a key no transport can serve is a ConfigError now

    @classmethod
    def from_env(cls, *, dotenv_path: str | None = ".env", **kwargs: Any) -> maxllm_gate:
        """A client configured from the environment and a ``.env`` file.

        Reads ``API_KEYS_CONFIG`` and the other variables of the configuration
        reference. It leaves logging alone: ``LOG_LEVEL`` and ``DEBUG`` are for the
        CLI and the gateway; an application configures :mod:`logging` itself.

        Raises:
          ConfigError: a variable is invalid; the message names each one.
        """
        return cls(config_from_env(dotenv_path=dotenv_path), **kwargs)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> maxllm_gate:
        """Start the actors in a task group nested in this task (structured)."""
        self._check_new()
        self._starting = starting = anyio.Event()  # a chat() meanwhile waits for this start
        try:
            await self._warm_up(self.config.keys)
            await self._open_state()
            try:
                await self._supervisor.__aenter__()
            except BaseException:
                await self._close_state()
                raise
            try:
                await self._start_actors()
            except BaseException as exc:
                self._state_name = "shut down"
                try:
                    await self._supervisor.__aexit__(type(exc), exc, exc.__traceback__)
                finally:
                    await self._close_state()
                raise
        finally:
            self._starting = None
            starting.set()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leaving normally drains: :meth:`shutdown` with ``shutdown_timeout``.

        Leaving on an exception (cancellation included) does not wait: calls in
        flight are cancelled and queued requests fail with :class:`ShutdownError`
        at once, so the exception surfaces promptly.
        """
        await self.shutdown(self.config.shutdown_timeout if exc is None else 0.0)

    async def start(self) -> None:
        """Start the actors without ``async with``; ``chat()`` does this on first use.

        The actors then live in a task the event loop owns, until
        :meth:`shutdown` (or the loop's end). Does nothing if already running.

        Raises:
          ShutdownError: the client was shut down; make a new one.
        """
        while self._starting is not None:  # another task is starting it: one start only
            await self._starting.wait()
        if self._state_name == "running":
            return
        self._check_new()
        self._starting = starting = anyio.Event()
        try:
            await self._start_host()
        finally:
            self._starting = None
            starting.set()

    async def _start_host(self) -> None:
        await self._warm_up(self.config.keys)
        host = HostTask()

        async def body(started: anyio.Event, stop: anyio.Event) -> None:
            await self._open_state()
            try:
                async with self._supervisor:
                    await self._start_actors()
                    started.set()
                    await stop.wait()
            finally:
                await self._close_state()

        self._host = host
        # Shielded: a host left starting by a cancelled caller would come up after a
        # shutdown() that saw no client running, and outlive it.
        with anyio.CancelScope(shield=True):
            await host.start(body)

    async def _open_state(self) -> None:
        """Connect the Redis limiter the client made, before any actor needs it."""
        if self._limiter is not None:
            await self._limiter.__aenter__()

    async def _close_state(self) -> None:
        """Disconnect it, after the actors have settled their last calls."""
        if self._limiter is not None:
            # Not shielded: its task group must exit at the level it was entered.
            await self._limiter.__aexit__(None, None, None)

    async def _warm_up(self, keys: Sequence[KeyConfig]) -> None:
        """Load what the first calls on ``keys`` need now, off the event loop.

        LiteLLM, if a key uses it: loaded on a first call instead, it would hold
        every call admitted meanwhile for seconds, then send them together. Their
        models' tokenizers: loaded on a first request, in a thread, they
        would let a virtual clock (trio's ``MockClock``) jump ahead meanwhile, as
        if the request had waited.
        """
        if "litellm" in self._transports:
            from maxllm_gate.providers.litellm_provider import load_litellm

            await load_litellm()
        for model in dict.fromkeys(m for key in keys for m in key.models):
            await self._estimator.prepare(model)
        # The native transport loads the CA bundle when it makes its connection pool:
        # on a busy host that stalls the loop for a tenth of a second or more. Made
        # during the first burst, the stall sends that burst late and the calls
        # admitted after it right behind it, so the provider sees them too close
        # together (429s at start). Make it now, off the loop.
        providers = {id(provider): provider for provider in map(self._provider_for, keys)}
        for provider in providers.values():
            prepare = getattr(provider, "prepare", None)
            if prepare is not None:
                await anyio.to_thread.run_sync(prepare)

    def _check_new(self) -> None:
        if self._starting is not None:
            raise ShutdownError("this client is starting (a request started it); use it as is")
        if self._state_name != "new":
            raise ShutdownError(
                f"this client is {self._state_name}; a client runs once, make a new one"
            )

    async def _start_actors(self) -> None:
        self._state_name = "running"
        for key in self.config.keys:
            await self._start_actor(key)
        log.info("client started", keys=len(self.config.keys), strategy=self._strategy.name)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop taking requests, let those queued and in flight finish, then stop.

        Waits up to ``timeout`` seconds (default: ``shutdown_timeout``); what is
        left then fails with :class:`ShutdownError`. Safe to call more than once.
        With ``async with``, call it from the task that entered the block (or let
        the block's exit call it).
        """
        if self._state_name != "running":
            self._state_name = "shut down"
            return
        self._state_name = "shutting down"
        try:
            await self._supervisor.shutdown(
                self.config.shutdown_timeout if timeout is None else timeout
            )
        finally:
            if self._host is not None:
                await self._host.stop()
            else:
                try:
                    await self._supervisor.__aexit__(None, None, None)
                finally:
                    await self._close_state()
            with anyio.CancelScope(shield=True):
                for provider in [self._provider, *self._transports.values()]:
                    if provider is not None:
                        await provider.aclose()
            self._state_name = "shut down"
            log.info("client stopped")

    # -- requests -----------------------------------------------------------------------

    async def chat(
        self,
        model: str,
        messages: Messages,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        priority: str | None = None,
        timeout: float | None = None,
        validate: bool = True,
        send_defaults: bool = True,
        wait_for_room: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Send a chat completion through the best key that has room for it.

        When every key is full the request waits for capacity instead of
        failing. ``max_tokens`` and ``temperature`` default to the configured
        ones; every other keyword is passed to the provider as is. With
        ``send_defaults=False`` (the gateway's pass-through) those defaults are
        not sent: the provider gets only what was given, while the reservation
        still counts ``default_max_tokens`` for an absent ``max_tokens`` and is
        corrected to the real usage afterwards.

        Raises:
          ValidationError: the request is malformed (nothing was queued).
          RequestTooLargeError: (a ValidationError) its charge is over a minute
            of every serving key's token limit; nothing was queued.
          QueueFullError: ``max_queue_size`` requests are already waiting. With
            ``wait_for_room=True`` the call waits for room instead
            (backpressure: callers get it in the order they came), within its
            ``timeout``.
          NoKeyAvailableError: no enabled key serves ``model``.
          RequestTimeoutError: ``timeout`` (or ``request_timeout``) passed, or
            no key can start the request before it passes (raised at once).
          ShutdownError: the client shut down before the answer came.
          ProviderError: the provider refused the request (a 400), or kept
            failing after ``max_retries`` retries. A 429 only once the provider
            refused this request more than ``max_rate_limit_retries`` times over
            ``max_cooldown`` seconds or more (a daily cap; a request too large
            for its real limit).

        Cancelling the caller removes the request from the queue, or cancels
        its call, and gives back the capacity the provider has not charged.
        """
        _check_timeout(timeout)
        job = await self._submit(
            model,
            messages,
            max_tokens,
            temperature,
            priority,
            validate,
            False,
            timeout,
            kwargs,
            send_defaults=send_defaults,
            wait_for_room=wait_for_room,
        )
        return await job.wait(job.deadline)

    async def chat_stream(
        self,
        model: str,
        messages: Messages,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        priority: str | None = None,
        timeout: float | None = None,
        validate: bool = True,
        wait_for_room: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[str]:
        """Like :meth:`chat`, but yields the text as it arrives.

        The provider's stream is read only as fast as you consume it. Stopping
        early (``break``, or closing the generator) closes the provider's
        stream and settles the reservation. Errors before the first text are
        retried like :meth:`chat`'s; after it, they are raised here.
        """
        stream = await self.stream_chunks(
            model,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            priority=priority,
            timeout=timeout,
            validate=validate,
            wait_for_room=wait_for_room,
            **kwargs,
        )
        async with stream:
            async for chunk in stream:
                if chunk.text:
                    yield chunk.text

    async def stream_chunks(
        self,
        model: str,
        messages: Messages,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        priority: str | None = None,
        timeout: float | None = None,
        validate: bool = True,
        send_defaults: bool = True,
        wait_for_room: bool = False,
        **kwargs: Any,
    ) -> ChatStream:
        """Queue a streamed request; returns a :class:`~maxllm_gate.streams.ChatStream`
        of the provider's chunks (with ``finish_reason`` and ``usage``), whose
        ``response`` holds the whole `ChatResponse` once read to the end.

        For relaying a stream as is (the gateway does). Use it with ``async with``::

            async with await client.stream_chunks("gpt-4o-mini", "Hi") as stream:
                async for chunk in stream:
                    print(chunk.text, chunk.finish_reason, chunk.usage)
            print(stream.response.key_used)

        Raises:
          ValidationError, QueueFullError, NoKeyAvailableError, ShutdownError:
            at once, as :meth:`chat` does; nothing was queued. The other errors
            of :meth:`chat` come from iterating the stream.

        ``send_defaults`` and ``wait_for_room`` are :meth:`chat`'s.
        """
        _check_timeout(timeout)
        job = await self._submit(
            model,
            messages,
            max_tokens,
            temperature,
            priority,
            validate,
            True,
            timeout,
            kwargs,
            send_defaults=send_defaults,
            wait_for_room=wait_for_room,
        )
        return ChatStream(job, job.deadline)

    async def _submit(
        self,
        model: str,
        messages: Messages,
        max_tokens: int | None,
        temperature: float | None,
        priority: str | None,
        validate: bool,
        stream: bool,
        timeout: float | None,
        extra: dict[str, Any],
        *,
        send_defaults: bool = True,
        wait_for_room: bool = False,
    ) -> Job:
        if self._state_name != "running":
            await self.start()
        request = build_chat_request(
            model,
            messages,
            validate=validate,
            temperature=temperature,
            max_tokens=max_tokens,
            priority=priority,
            **extra,
        )
        if not validate:  # validation checks it too; it guards the key, so never skip it
            check_routing_parameters(request.extra)
        level = self._priority_level(request.priority)
        await self._estimator.prepare(request.model)
        wire = request.message_dicts()
        limit = self.config.default_max_tokens if request.max_tokens is None else request.max_tokens
        temp = (
            self.config.default_temperature if request.temperature is None else request.temperature
        )
        params = dict(request.extra)
        if send_defaults or request.max_tokens is not None:
            params["max_tokens"] = limit
        if send_defaults or request.temperature is not None:
            params["temperature"] = temp
        defaulted = (request.max_tokens is None, request.temperature is None)
        tools = request.extra.get("tools")
        prompt = PromptSize(*prompt_characters(wire, tools))
        n = request.extra.get("n") or 1
        job = Job(
            request_id=f"{self._id_prefix}-{next(self._ids)}",
            model=request.model,
            messages=wire,
            params=params,
            priority=level,
            cost=Cost(tokens=prompt.by_characters() + limit * n),  # for ranking keys
            prompt=prompt,
            n=n,
            max_tokens=limit,
            seq=self._dispatcher.next_seq(),
            stream=stream,
            defaults=_DEFAULTED[defaulted] if send_defaults else frozenset(),
            timeout=self.config.request_timeout if timeout is None else timeout,
        )
        await self._enqueue(job, wait_for_room)
        return job

    async def embed(
        self,
        model: str,
        input: EmbeddingInput,
        *,
        dimensions: int | None = None,
        priority: str | None = None,
        timeout: float | None = None,
        wait_for_room: bool = False,
        **kwargs: Any,
    ) -> EmbeddingResponse:
        """Embed ``input`` through the best key that has room for it.

        ``input`` is a string, a list of strings, a token array (a list of ints) or
        a list of token arrays, as OpenAI's embeddings API takes; the answer holds
        one vector per input, in their order. ``dimensions`` asks for shorter
        vectors (models that support it). Every other keyword (``user``...) is
        passed to the provider as is. Admission charges the input only (see
        :mod:`maxllm_gate.embeddings`); waiting, retries and what is learned from
        the provider's headers are as for :meth:`chat`.

        Raises:
          ValidationError: the input is malformed (nothing was queued).
          RequestTooLargeError: more inputs than ``max_embedding_inputs``, or an
            input over ``max_embedding_input_tokens`` (the smallest of the keys
            serving ``model``), or a charge over a minute of every key's limit.
          The other errors of :meth:`chat`, for the same reasons.

        ``wait_for_room`` and cancellation are as for :meth:`chat`.
        """
        _check_timeout(timeout)
        job = await self._submit_embedding(
            model, input, dimensions, priority, timeout, kwargs, wait_for_room
        )
        return await job.wait_embedding(job.deadline)

    def embedding_input_limit(self, model: str) -> int:
        """The most inputs one embedding request to ``model`` may hold: the smallest
        ``max_embedding_inputs`` of the keys serving it (OpenAI's 2048 if none does)."""
        limits = [a.models[model] for a in self._dispatcher.actors.values() if model in a.models]
        limits += [key.models[model] for key in self.config.keys if model in key.models]
        return min((lim.max_embedding_inputs for lim in limits), default=2048)

    async def _submit_embedding(
        self,
        model: str,
        input: EmbeddingInput,
        dimensions: int | None,
        priority: str | None,
        timeout: float | None,
        kwargs: dict[str, Any],
        wait_for_room: bool = False,
    ) -> Job:
        if self._state_name != "running":
            await self.start()
        check_routing_parameters(kwargs)
        if not isinstance(model, str) or not model.strip():
            raise ValidationError(f"model: must be a non-empty string, got {model!r}")
        if kwargs.get("encoding_format", "float") != "float":
            raise ValidationError(
                "encoding_format: embed() returns floats; only 'float' can be asked for"
            )
        if dimensions is not None:
            if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
                raise ValidationError(
                    f"dimensions: must be a positive integer or None, got {dimensions!r}"
                )
            kwargs["dimensions"] = dimensions
        level = self._priority_level(priority)
        items = embedding_inputs(input)
        await self._estimator.prepare(model)
        limits = [a.models[model] for a in self._dispatcher.actors.values() if model in a.models]
        if limits:  # else submit() says no key serves it
            check_request_limits(
                items,
                model=model,
                max_inputs=min(lim.max_embedding_inputs for lim in limits),
                max_input_tokens=min(lim.max_embedding_input_tokens for lim in limits),
                count_text=lambda text: self._estimator.count_text(model, text),
            )
        prompt = input_size(items)
        job = Job(
            request_id=f"{self._id_prefix}-{next(self._ids)}",
            model=model,
            messages=(),
            params=kwargs,
            priority=level,
            cost=Cost(tokens=prompt.by_characters()),
            prompt=prompt,
            max_tokens=0,
            seq=self._dispatcher.next_seq(),
            timeout=self.config.request_timeout if timeout is None else timeout,
            embed_input=input if isinstance(input, str) else cast("EmbeddingInput", items),
        )
        await self._enqueue(job, wait_for_room)
        return job

    def _priority_level(self, priority: str | None) -> int:
        try:
            return PRIORITY_LEVELS[priority or self.config.default_priority]
        except KeyError:
            raise ValidationError(
                f"priority: must be one of {', '.join(PRIORITIES)}; got {show_value(priority)}"
            ) from None

    async def _enqueue(self, job: Job, wait_for_room: bool) -> None:
        if not wait_for_room:
            return self._dispatcher.submit(job)
        with anyio.move_on_at(job.deadline):
            return await self._dispatcher.submit_when_room(job)
        raise RequestTimeoutError(
            f"request {job.request_id} timed out after "
            f"{anyio.current_time() - job.submitted_at:.3f}s waiting for room in the queue "
            f"(max_queue_size={self.config.max_queue_size})"
        )

    # -- keys ---------------------------------------------------------------------------

    async def add_key(
        self,
        api_key: str | KeyConfig,
        provider: str | None = None,
        models: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        """Start using another key, now. Waiting requests may use it at once.

        Pass a :class:`KeyConfig`, or its fields. Returns the key's ``key_id``.
        Like ``chat()``, it starts a client not started yet.

        Raises:
          ConfigError: the key is invalid, or its ``key_id`` is taken.
          ShutdownError: the client was shut down.
        """
        if isinstance(api_key, KeyConfig):
            key = api_key
        else:
            key = KeyConfig(api_key=api_key, provider=provider or "", models=models or {}, **fields)
        if key.key_id in self._dispatcher.actors:
            raise ConfigError(f"key_id {key.key_id!r} is already in use")
        if self._state_name != "running":
            await self.start()  # a client made with no keys, to add them at runtime
        register_secret(key.api_key)
        self._provider_for(key)
        await self._warm_up([key])
        await self._start_actor(key)
        return key.key_id

    async def remove_key(self, key_id: str) -> None:
        """Stop routing to ``key_id``. Its calls in flight finish; queued requests move on.

        Raises:
          ConfigError: no key has that id.
        """
        if self._supervisor.remove(key_id) is None:
            raise ConfigError(f"no key with key_id {key_id!r}")
        await anyio.lowlevel.checkpoint()

    async def _start_actor(self, key: KeyConfig) -> None:
        actor = KeyActor(
            key,
            config=self.config,
            state=self._state,
            provider=self._provider_for(key),
            estimator=self._estimator,
            dispatcher=self._dispatcher,
            random=self._random,
        )
        await self._supervisor.add(actor)

    def _provider_for(self, key: KeyConfig) -> Provider:
        """The provider given to the client, or the one the key's transport names,
        shared by every key with that transport."""
        if self._provider is not None:
            return self._provider
        transport = key.transport or self.config.transport
        provider = self._transports.get(transport)
        if provider is None:
            provider = self._transports[transport] = _make_transport(transport, self.config)
        if transport == "openai_compat":
            from maxllm_gate.providers.openai_compat import OpenAICompatProvider

            if not OpenAICompatProvider.supports(key):
                raise ConfigError(
                    f"key {key.key_id}: provider {key.provider!r} has no known "
                    "OpenAI-compatible endpoint; set api_base, or use transport 'litellm'"
                )
        return provider

    # -- introspection ------------------------------------------------------------------

    async def refresh_shared_state(self) -> None:
        """With Redis, re-read every key's shared limits (one round trip per key and
        model), so that :meth:`capacity` and the key choice show what every process
        sharing them did, as of now, not as of this process's last call. Without
        Redis (or while Redis is unreachable) it does nothing."""
        refresh = getattr(self._state, "refresh", None)
        if refresh is not None:
            await refresh()

    def status(self) -> dict[str, Any]:
        """The scheduler's state: queue depths, calls in flight, and each key's health."""
        return report.status(self._dispatcher, running=self._state_name == "running")

    def capacity(self) -> dict[str, Any]:
        """What each key and model could take right now, and the totals."""
        return report.capacity(self._dispatcher)

    def latency(self) -> dict[str, dict[str, float]]:
        """Each key's recent latency: ``avg_ms``, ``p50_ms``, ``p95_ms``, ``p99_ms``."""
        return report.latency(self._dispatcher)

    def scores(self, model: str | None = None) -> dict[str, Any]:
        """The routing strategy's score for each key (lower wins), with its inputs."""
        return report.scores(self._dispatcher, model)

    def __repr__(self) -> str:
        return (
            f"<maxllm_gate {self._state_name} keys={len(self._dispatcher.actors)} "
            f"strategy={self._strategy.name}>"
        )


def _check_timeout(timeout: object) -> None:
    """Refuse a bad ``timeout=`` before the request is queued (as REQUEST_TIMEOUT is)."""
    if is_valid_timeout(timeout):
        return
    shown = repr(timeout) if isinstance(timeout, int | float) else type(timeout).__name__
    raise ValidationError(f"timeout: must be a number of seconds > 0, or None; got {shown}")


def _make_transport(transport: str, config: maxllm_gate_config) -> Provider:
    """A built-in provider; imported only when a key uses it (LiteLLM is heavy)."""
    if transport == "openai_compat":
        from maxllm_gate.providers.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(timeout=config.call_timeout)
    from maxllm_gate.providers.litellm_provider import LiteLLMProvider

    return LiteLLMProvider()
