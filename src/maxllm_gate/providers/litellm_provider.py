"""The default transport: any provider LiteLLM knows, through ``litellm.acompletion``.

LiteLLM is imported on first use, in a worker thread (it takes seconds), never
by ``import maxllm_gate``, and told to fetch nothing on its own (no price map,
catalogs or tokenizers: ``LITELLM_LOCAL_MODEL_COST_MAP``, ``LITELLM_OFFLINE_MODE``).
It never retries (``num_retries=0``, ``max_retries=0``): we own retries.

LiteLLM only runs under asyncio: there it runs in the caller's loop; under trio,
on one private asyncio loop in a daemon thread (`AsyncioThread`), which
:meth:`LiteLLMProvider.aclose` stops. Cancelling a call cancels LiteLLM's
request and drops its connection.

Errors are classified by status code and exception type (and the body's error
code, for ``insufficient_quota``), never by message text. They keep the provider's
own message, ``code`` and ``param`` (read from the provider's error object, not
LiteLLM's wrapper), with the key masked, and carry no cause or context.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import itertools
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from types import ModuleType
from typing import Any, TypeVar

import anyio
import attrs
import sniffio

from maxllm_gate.errors import ProviderError, TransientError
from maxllm_gate.providers._asyncio_thread import AsyncioThread, host_caller
from maxllm_gate.providers.base import (
    ProviderCall,
    ProviderEmbedding,
    ProviderResponse,
    StreamChunk,
)
from maxllm_gate.providers.headers import normalize_headers, provider_error
from maxllm_gate.providers.turns import SendTurns
from maxllm_gate.responses import Usage

__all__ = ["LiteLLMProvider", "LiteLLMStream", "load_litellm"]

T = TypeVar("T")

_litellm: ModuleType | None = None
_import_lock = threading.Lock()
#: openai's and httpx's transport errors (timeouts, lost connections), known once LiteLLM is.
_transport_errors: tuple[type[BaseException], ...] = ()


def _import_litellm() -> ModuleType:
    """Import and set up LiteLLM once per process (blocking: call it in a worker thread)."""
    global _litellm, _transport_errors
    with _import_lock:  # concurrent first calls wait here for the one import
        if _litellm is None:
            # Without these LiteLLM downloads its price map at import, and
            # catalogs and tokenizers at call time (stalling 24 s when offline).
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
            module: Any = importlib.import_module("litellm")
            module.suppress_debug_info = True  # else it prints a help banner on every error
            _watch_sends(module)
            _warm_up(module)
            _transport_errors = (
                importlib.import_module("openai").APIConnectionError,  # and its timeout
                importlib.import_module("httpx").TransportError,
            )
            _litellm = module
    return _litellm


def _warm_up(litellm: Any) -> None:
    """Make one mock call, plain and streamed, with no network access.

    LiteLLM imports more modules, and loads a tokenizer, on its first call of
    each kind: about a second that would otherwise block the caller's event
    loop. It runs on a throwaway loop (we are in a worker thread); LiteLLM
    rebinds its per-loop state to whichever loop calls it next.
    """
    messages = [{"role": "user", "content": "warm-up"}]
    options = {"model": "openai/gpt-4o-mini", "api_key": "unused", "mock_response": "ok"}

    async def calls() -> None:
        await litellm.acompletion(messages=messages, **options)
        stream = await litellm.acompletion(
            messages=messages, stream=True, stream_options={"include_usage": True}, **options
        )
        async for _ in stream:
            pass

    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop()
        return  # imported on a running loop (a test): it cannot run another here
    with contextlib.suppress(Exception):  # only a missed speed-up: real calls will do it
        asyncio.run(calls())


async def load_litellm() -> ModuleType:
    """The ``litellm`` module, imported in a worker thread on first use.

    On cancellation the import goes on in its thread; the next call waits for it.
    """
    if _litellm is not None:
        return _litellm
    return await anyio.to_thread.run_sync(_import_litellm, abandon_on_cancel=True)


class LiteLLMProvider:
    """A `~maxllm_gate.providers.base.Provider` that calls ``litellm.acompletion``.

    The model sent is ``"<key.provider>/<model>"`` (unless the model already
    starts with that prefix), with the key's ``api_key`` and ``api_base``.
    Creating one is cheap: LiteLLM loads on the first call.
    """

    def __init__(self) -> None:
        self._thread = AsyncioThread("maxllm_gate-litellm", on_stop=_close_loop_clients)
        #: LiteLLM's ~9 ms of CPU per call before it sends: see `SendTurns`.
        self.send_turns = SendTurns()
        # (LiteLLM model, api_base) of the models that refuse a temperature (but 1)
        self._no_temperature: set[tuple[str, str | None]] = set()

    async def complete(self, call: ProviderCall) -> ProviderResponse:
        """Make the call and return the whole completion.

        Raises:
          ProviderError: the subclass for the error's status and type: a 429 is
            a `RateLimitError` (with ``retry_after`` from the headers), a
            timeout or dropped connection a `TransientError`.

        Cancellation cancels LiteLLM's request and closes its connection.
        """
        litellm = await load_litellm()
        hook = _SendHook.for_call(call)
        response = await self._on_asyncio(
            lambda: _acompletion(
                litellm, call, stream=False, no_temperature=self._no_temperature, hook=hook
            )
        )
        return attrs.evolve(_response_of(call, response), sent_at=hook.sent_at())

    async def open_stream(self, call: ProviderCall) -> LiteLLMStream:
        """Start a streamed call (asking for a final usage chunk); returns once accepted.

        Raises:
          ProviderError: as :meth:`complete`, when the provider refuses the call.

        Cancellation cancels LiteLLM's request and closes its connection.
        """
        litellm = await load_litellm()
        hook = _SendHook.for_call(call)
        upstream = await self._on_asyncio(
            lambda: _acompletion(
                litellm, call, stream=True, no_temperature=self._no_temperature, hook=hook
            ),
            discard=lambda orphan: orphan.aclose(),  # its caller was cancelled meanwhile
        )
        headers = normalize_headers(_hidden_headers(upstream))
        if self._bridged():
            return LiteLLMStream(call, self._thread.iterate(upstream), headers)
        return LiteLLMStream(call, upstream, headers)

    async def embed(self, call: ProviderCall) -> ProviderEmbedding:
        """Embed ``call.input`` through ``litellm.aembedding``; the vectors, in the
        inputs' order.

        Raises:
          ProviderError: as :meth:`complete`.

        Cancellation cancels LiteLLM's request and closes its connection.
        """
        litellm = await load_litellm()
        hook = _SendHook.for_call(call)
        response = await self._on_asyncio(lambda: _aembedding(litellm, call, hook))
        return attrs.evolve(_embedding_of(call, response), sent_at=hook.sent_at())

    async def aclose(self) -> None:
        """Stop the private asyncio loop and its thread, if a call under trio started one."""
        await self._thread.aclose()

    @staticmethod
    def _bridged() -> bool:
        return sniffio.current_async_library() != "asyncio"

    async def _on_asyncio(
        self,
        make: Callable[[], Coroutine[Any, Any, T]],
        discard: Callable[[T], Coroutine[Any, Any, object]] | None = None,
    ) -> T:
        if self._bridged():  # LiteLLM fails under trio: run it on our own asyncio loop
            return await self._thread.run(make, discard=discard)
        return await make()


class LiteLLMStream:
    """An open LiteLLM stream, as `~maxllm_gate.providers.base.StreamChunk`\\ s.

    Iterate it; always `aclose` it (idempotent), which closes LiteLLM's
    stream and its connection. An error mid-stream raises the classified
    `ProviderError`.
    """

    def __init__(self, call: ProviderCall, chunks: Any, headers: Mapping[str, str]) -> None:
        self._call = call
        self._chunks = chunks  # LiteLLM's stream, or a BridgedIterator over it
        self.headers: Mapping[str, str] = headers

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __anext__(self) -> StreamChunk:
        try:
            raw = await self._chunks.__anext__()
        except StopAsyncIteration:
            raise
        except Exception as exc:
            error = _provider_error(self._call, exc)
        else:
            return _chunk_of(raw)
        raise error  # outside the except: no __context__ holding LiteLLM's exception

    async def aclose(self) -> None:
        """Close the stream and release its connection. Safe to call again."""
        with anyio.CancelScope(shield=True):
            await self._chunks.aclose()


# -- on an asyncio loop --------------------------------------------------------------------


def _arguments(call: ProviderCall) -> dict[str, Any]:
    key = call.key
    prefix = f"{key.provider}/"
    kwargs: dict[str, Any] = dict(call.params)
    if call.input is not None:
        kwargs["input"] = call.input
    else:
        kwargs["messages"] = [dict(message) for message in call.messages]  # LiteLLM may edit
    kwargs.update(
        model=call.model if call.model.startswith(prefix) else prefix + call.model,
        api_key=key.api_key,
        num_retries=0,  # we own retries: LiteLLM's would turn one 429 into three calls
        max_retries=0,
    )
    if key.api_base is not None:
        kwargs["api_base"] = key.api_base
    if key.api_version is not None:
        kwargs["api_version"] = key.api_version
    # The same on every attempt, as the native transport sends it: lets the provider
    # (and the fake one in tests) tell a retry from a new request.
    headers = dict(kwargs.get("extra_headers") or {})
    headers.setdefault("x-client-request-id", call.request_id)
    kwargs["extra_headers"] = headers
    return kwargs


#: The send hooks of the calls under way, by their ``litellm_call_id``.
_send_hooks: dict[str, _SendHook] = {}
_call_ids = itertools.count()
_pre_send_logger: Any = None
#: Seconds after LiteLLM began a call at which it is taken to have sent it, if it
#: has not said so (a path that never logs a pre-call would hold its turn throughout).
SEND_REPORT_MAX = 0.05


def _watch_sends(litellm: Any) -> None:
    """Add one input callback to LiteLLM, once per process: LiteLLM calls it right
    before it sends a request (chat or embeddings, maybe on an executor's thread),
    and it tells that call's `_SendHook`. ``logger_fn`` would do for chat, but
    LiteLLM's ``embedding`` drops it."""
    global _pre_send_logger
    if _pre_send_logger is None:
        base = importlib.import_module("litellm.integrations.custom_logger").CustomLogger

        class PreSendLogger(base):  # type: ignore[misc,valid-type]
            def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
                hook = _send_hooks.get(kwargs.get("litellm_call_id"))
                if hook is not None:
                    hook.sent()

        _pre_send_logger = PreSendLogger()
    if _pre_send_logger not in litellm.input_callback:
        litellm.input_callback.append(_pre_send_logger)


class _SendHook:
    """When one call's request left: noted by LiteLLM's pre-call callback, and told
    to the caller's loop (``call.on_sent(at)``) once. If LiteLLM has not said so
    `SEND_REPORT_MAX` seconds into the call, that time is told first (the request
    left no sooner). LiteLLM's loop thread alone reads and sets ``_reported`` and
    ``_timed``.
    """

    __slots__ = ("_call_soon", "_loop", "_offset", "_on_sent", "_reported", "_sent", "_timed")

    def __init__(
        self,
        call_soon: Callable[[Callable[[], object]], None],
        on_sent: Callable[[float], object] | None,
        offset: float,
    ) -> None:
        self._call_soon = call_soon
        self._on_sent = on_sent
        # The caller's clock minus time.monotonic(): a callback outside its tasks
        # cannot read its clock (trio's has an offset of its own).
        self._offset = offset
        self._sent: float | None = None
        self._reported = False  # on_sent told anything
        self._timed = False  # on_sent told the send's time
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def for_call(cls, call: ProviderCall) -> _SendHook:
        """A hook for ``call``. Create it on the caller's loop."""
        return cls(host_caller(), call.on_sent, anyio.current_time() - time.monotonic())

    @contextlib.contextmanager
    def watching(self, kwargs: dict[str, Any]) -> Iterator[None]:
        """Watch for the send of the LiteLLM call made with ``kwargs``, on its loop."""
        call_id = kwargs.setdefault("litellm_call_id", f"maxllm_gate-{next(_call_ids)}")
        _send_hooks[call_id] = self
        self._loop = asyncio.get_running_loop()
        timer = self._loop.call_later(SEND_REPORT_MAX, self._give_up)
        try:
            yield
        finally:
            timer.cancel()
            _send_hooks.pop(call_id, None)

    def sent(self) -> None:
        """LiteLLM is about to send (maybe on an executor's thread)."""
        if self._sent is None:
            self._sent = time.monotonic()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._report_sent)

    def _give_up(self) -> None:
        if not self._reported:
            self._reported = True
            self._tell(time.monotonic())

    def _report_sent(self) -> None:
        if not self._timed and self._sent is not None:
            self._timed = self._reported = True
            self._tell(self._sent)

    def _tell(self, monotonic: float) -> None:
        if self._on_sent is not None:
            self._call_soon(functools.partial(self._on_sent, monotonic + self._offset))

    def sent_at(self) -> float | None:
        """When the request left, on the caller's clock."""
        return None if self._sent is None else self._sent + self._offset


async def _acompletion(
    litellm: ModuleType,
    call: ProviderCall,
    *,
    stream: bool,
    no_temperature: set[tuple[str, str | None]],
    hook: _SendHook,
) -> Any:
    """LiteLLM's ``ModelResponse``, or its stream once the provider accepted the call.

    Reasoning models (o-series, gpt-5) take no ``temperature`` but 1, and LiteLLM
    refuses the call before sending it (``UnsupportedParamsError``; it renames
    ``max_tokens`` for them itself). A temperature the client filled in from its
    config is then left out, for this model from now on; one the caller asked for
    is not.
    """
    kwargs = _arguments(call)
    if stream:
        options = kwargs.get("stream_options") or {}
        kwargs.update(stream=True, stream_options={**options, "include_usage": True})
    else:
        kwargs["stream"] = False
    model = (kwargs["model"], kwargs.get("api_base"))
    droppable = "temperature" in call.defaults and "temperature" in kwargs
    if droppable and model in no_temperature:
        del kwargs["temperature"]
    try:
        with hook.watching(kwargs):
            try:
                return await litellm.acompletion(**kwargs)
            except getattr(litellm, "UnsupportedParamsError", ()):  # () if LiteLLM renames it
                if not droppable or model in no_temperature:
                    raise
            no_temperature.add(model)
            del kwargs["temperature"]
            return await litellm.acompletion(**kwargs)
    except Exception as exc:
        error = _provider_error(call, exc)
    raise error  # outside the except: no __context__ holding LiteLLM's exception


async def _aembedding(litellm: ModuleType, call: ProviderCall, hook: _SendHook) -> Any:
    """LiteLLM's ``EmbeddingResponse`` for the call (floats, whatever was asked)."""
    kwargs = _arguments(call)
    kwargs["encoding_format"] = "float"
    try:
        with hook.watching(kwargs):
            return await litellm.aembedding(**kwargs)
    except Exception as exc:
        error = _provider_error(call, exc)
    raise error  # outside the except: no __context__ holding LiteLLM's exception


# -- translation ---------------------------------------------------------------------------


def _provider_error(call: ProviderCall, exc: Exception) -> ProviderError:
    """The `ProviderError` for a LiteLLM exception, by its status and types only."""
    answer_headers = getattr(exc, "litellm_response_headers", None)
    headers = answer_headers
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) or (answer_headers is None and _unanswered(exc)):
        status = None  # LiteLLM labels a timeout 408 and a refused connection 500
    body = _error_body(exc) if status is not None else None
    message = None
    if body is None or not _error_message_in(body):
        answered = f"answered {status}" if status is not None else "could not be reached"
        message = f"{call.key.provider} {answered} ({type(exc).__name__}, via LiteLLM)"
    error = provider_error(
        status,
        body=body,
        headers=headers if isinstance(headers, Mapping) else None,
        message=message,
    )
    error.key_id = call.key.key_id
    return error.scrub(call.key.api_key)  # a provider may echo the key back, in any field


def _error_body(exc: BaseException) -> Mapping[str, Any] | None:
    """The provider's error object, as the native transport reads it.

    LiteLLM's own exception carries neither ``body`` nor ``code``; the provider
    SDK's exception it wraps does, and the HTTP answer it keeps holds the JSON.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        body = getattr(current, "body", None)
        if isinstance(body, Mapping) and body:
            return body
        current = current.__cause__ or current.__context__
    content = getattr(getattr(exc, "response", None), "content", None)
    if isinstance(content, bytes | str):
        try:
            parsed = json.loads(content)
        except ValueError:
            return None
        return parsed if isinstance(parsed, Mapping) else None
    return None


def _error_message_in(body: Mapping[str, Any]) -> bool:
    error = body.get("error", body)
    return isinstance(error, str) or (
        isinstance(error, Mapping) and isinstance(error.get("message"), str)
    )


def _unanswered(exc: BaseException) -> bool:
    """Whether ``exc`` or its causes is a transport failure: a timeout, a lost connection."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _transport_errors):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


async def _close_loop_clients() -> None:
    """Close the HTTP clients LiteLLM cached for the running loop (our private one).

    LiteLLM keeps a client per (settings, event loop) and never closes it; ours
    would otherwise be left with open sockets when the loop closes. Best effort:
    this leans on the cache's key scheme, ``<key>-<loop token>``.
    """
    cache: Any = getattr(_litellm, "in_memory_llm_clients_cache", None)
    if cache is None:
        return
    suffix = cache.update_cache_key_with_event_loop("")
    if not suffix:
        return
    for key, client in list(cache.cache_dict.items()):
        if isinstance(key, str) and key.endswith(suffix):
            close = getattr(client, "aclose", None) or getattr(client, "close", None)
            result = close() if callable(close) else None
            if inspect.isawaitable(result):
                await result


def _hidden_headers(response: Any) -> Any:
    hidden = getattr(response, "_hidden_params", None)
    return hidden.get("additional_headers") if isinstance(hidden, Mapping) else None


def _response_of(call: ProviderCall, response: Any) -> ProviderResponse:
    choices = getattr(response, "choices", None) or []
    choice = choices[0] if choices else None
    message = getattr(choice, "message", None)
    tool_calls = getattr(message, "tool_calls", None)
    model = getattr(response, "model", None)
    return ProviderResponse(
        content=getattr(message, "content", None),
        finish_reason=getattr(choice, "finish_reason", None),
        usage=_usage_of(getattr(response, "usage", None)),
        model=model if isinstance(model, str) and model else call.model,
        headers=normalize_headers(_hidden_headers(response)),
        tool_calls=tuple(_plain(t) for t in tool_calls) if tool_calls else None,
        raw=response,
    )


def _embedding_of(call: ProviderCall, response: Any) -> ProviderEmbedding:
    items = list(getattr(response, "data", None) or [])
    vectors: list[tuple[int, list[float]]] = []
    for position, item in enumerate(items):
        get = item.get if isinstance(item, Mapping) else lambda name, i=item: getattr(i, name, None)
        index, vector = get("index"), get("embedding")
        if not isinstance(vector, list):
            raise _fail_answer(call, "the provider's answer held no embedding vectors")
        vectors.append((index if isinstance(index, int) else position, vector))
    vectors.sort(key=lambda pair: pair[0])
    model = getattr(response, "model", None)
    return ProviderEmbedding(
        vectors=[vector for _, vector in vectors],
        usage=_usage_of(getattr(response, "usage", None)),
        model=model if isinstance(model, str) and model else call.model,
        headers=normalize_headers(_hidden_headers(response)),
        raw=response,
    )


def _fail_answer(call: ProviderCall, message: str) -> ProviderError:
    error = TransientError(message)
    error.key_id = call.key.key_id
    return error


def _chunk_of(raw: Any) -> StreamChunk:
    choices = getattr(raw, "choices", None) or []
    choice = choices[0] if choices else None
    text = getattr(getattr(choice, "delta", None), "content", None)
    return StreamChunk(
        text=text if isinstance(text, str) else "",
        finish_reason=getattr(choice, "finish_reason", None),
        usage=_usage_of(getattr(raw, "usage", None)),
        raw=raw,
    )


def _usage_of(raw: Any) -> Usage | None:
    counts = [getattr(raw, name, None) for name in ("prompt_tokens", "completion_tokens")]
    if not any(isinstance(count, int) for count in counts):
        return None
    prompt, completion = (count if isinstance(count, int) else 0 for count in counts)
    total = getattr(raw, "total_tokens", None)
    # LiteLLM counts Anthropic's cache reads in prompt_tokens, and names them twice.
    cached = getattr(getattr(raw, "prompt_tokens_details", None), "cached_tokens", None)
    if not isinstance(cached, int):
        cached = getattr(raw, "cache_read_input_tokens", None)
    return Usage(
        prompt,
        completion,
        total if isinstance(total, int) else prompt + completion,
        cached_prompt_tokens=cached if isinstance(cached, int) else 0,
    )


def _plain(tool_call: Any) -> dict[str, Any]:
    """A tool call as a plain dict (LiteLLM gives pydantic objects)."""
    return dict(tool_call) if isinstance(tool_call, Mapping) else dict(tool_call.model_dump())
