"""The native transport: OpenAI's chat completions and embeddings APIs over HTTP/1.1,
for every compatible provider.

No LiteLLM and no thread: the calls run on anyio, alike under asyncio and
trio. They go through `~maxllm_gate.providers.http11.Http11Transport`, one
pool of keep-alive connections for all keys, called directly rather than
through an `httpx.AsyncClient` (whose layers cost more CPU than the call
itself); requests and responses are still httpx's, so is a client you pass::

    client = maxllm_gate(keys=[KeyConfig(api_key=..., provider="groq", models=...)],
                         provider=OpenAICompatProvider())

With a proxy in the environment (``HTTPS_PROXY``, ``ALL_PROXY``...) the calls go
through an `httpx.AsyncClient` instead, which honours it.

Errors are classified by `~maxllm_gate.providers.headers.provider_error` from the
status code and the body's error code; failing to reach the provider (timeout,
refused or dropped connection) is a `~maxllm_gate.errors.TransientError`. No error
holds the API key, nor chains the httpx exception (whose request holds it).
"""

from __future__ import annotations

import functools
import json
import urllib.request
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx

from maxllm_gate._version import __version__
from maxllm_gate.errors import BadRequestError, ConfigError, ProviderError, TransientError
from maxllm_gate.providers.base import (
    ProviderCall,
    ProviderEmbedding,
    ProviderResponse,
    StreamChunk,
)
from maxllm_gate.providers.headers import normalize_headers, provider_error
from maxllm_gate.providers.http11 import Http11Transport
from maxllm_gate.responses import Usage

if TYPE_CHECKING:
    from maxllm_gate.config import KeyConfig

__all__ = ["BASE_URLS", "OpenAICompatProvider", "OpenAICompatStream"]

#: Provider name (as in `KeyConfig.provider`) -> base URL of its OpenAI-compatible API.
BASE_URLS: Mapping[str, str] = MappingProxyType(
    {
        "openai": "https://api.openai.com/v1",
        "groq": "https://api.groq.com/openai/v1",
        "openrouter": "https://openrouter.ai/api/v1",
        "together_ai": "https://api.together.xyz/v1",
        "fireworks_ai": "https://api.fireworks.ai/inference/v1",
        "nvidia_nim": "https://integrate.api.nvidia.com/v1",
        "anyscale": "https://api.endpoints.anyscale.com/v1",
        "deepseek": "https://api.deepseek.com/v1",
        "mistral": "https://api.mistral.ai/v1",
        "deepinfra": "https://api.deepinfra.com/v1/openai",
        "perplexity": "https://api.perplexity.ai",
        "xai": "https://api.x.ai/v1",
        "cerebras": "https://api.cerebras.ai/v1",
        "sambanova": "https://api.sambanova.ai/v1",
    }
)
_DRAIN_SECONDS = 1.0  # to read what follows [DONE] (normally only the body's end)
_DRAIN_READS = 1024  # reads at most, when finishing a body
_USER_AGENT = f"maxllm_gate/{__version__}"
# OpenAI's error codes for a parameter the model does not take (see _adapt_to_refusal).
_REFUSAL_CODES = ("unsupported_parameter", "unsupported_value")


class OpenAICompatProvider:
    """A `~maxllm_gate.providers.base.Provider` for OpenAI-compatible chat completions APIs.

    A key's base URL is its ``api_base``, else ``BASE_URLS[key.provider]``.

    Args:
      timeout: seconds allowed to connect, to write, for each read (a stream's
        reads are timed one by one) and to wait for a free connection; None
        for no limit.
      max_connections: calls in flight at once, over all keys, each on its own
        connection (kept alive for the next calls).
      client: an `httpx.AsyncClient` to use instead (its own timeout and limits
        then apply); :meth:`aclose` leaves it open for its owner to close.
    """

    def __init__(
        self,
        *,
        timeout: float | None = 600.0,
        max_connections: int = 1000,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._timeout = httpx.Timeout(timeout)
        self._max_connections = max_connections
        self._lent = client  # given: its owner closes it
        self._client: httpx.AsyncClient | None = None  # made: with a proxy in the environment
        self._transport: Http11Transport | None = None  # made: otherwise
        self._urls: dict[tuple[str, str], httpx.URL] = {}  # (base URL, path) -> its URL
        # (api_base, provider, model) -> the parameters it refused (see _adapt_to_refusal)
        self._refused: dict[tuple[str | None, str, str], frozenset[str]] = {}

    @staticmethod
    def supports(key: KeyConfig) -> bool:
        """Whether this transport knows where to send ``key``'s calls."""
        return key.api_base is not None or key.provider.lower() in BASE_URLS

    async def complete(self, call: ProviderCall) -> ProviderResponse:
        """POST the call to ``{base}/chat/completions`` and return the parsed completion.

        Raises:
          ProviderError: the subclass for a non-2xx answer's status and error
            code; `TransientError` if the provider could not be reached or did
            not answer with a JSON object.
          BadRequestError: the parameters cannot be sent as JSON.
          ConfigError: the key has no ``api_base`` and its provider no default.

        Cancellation abandons the request and closes its connection.
        """
        response = await self._send(call, stream=False)
        data = _json_or_none(response)
        if not response.is_success:
            failure = _status_error(call, response, data)
            if self._adapt_to_refusal(call, failure):
                return await self.complete(call)
            raise failure
        if not isinstance(data, Mapping):
            raise _fail(call, TransientError("the provider's answer was not a JSON object"))
        headers = normalize_headers(response.headers)
        if (error := _error_in(call, data, headers)) is not None:
            raise error
        choice = _first_choice(data)
        message = choice.get("message")
        message = message if isinstance(message, Mapping) else {}
        content, tool_calls = message.get("content"), message.get("tool_calls")
        model = data.get("model")
        return ProviderResponse(
            content=content if isinstance(content, str) else None,
            finish_reason=choice.get("finish_reason"),
            usage=_usage(data.get("usage")),
            model=model if isinstance(model, str) and model else call.model,
            headers=headers,
            tool_calls=tuple(tool_calls) if isinstance(tool_calls, list) and tool_calls else None,
            raw=data,
        )

    async def embed(self, call: ProviderCall) -> ProviderEmbedding:
        """POST the call's ``input`` to ``{base}/embeddings``; the vectors, in the
        inputs' order (floats: ``encoding_format`` is always ``"float"``).

        Raises:
          The same errors as :meth:`complete`.

        Cancellation abandons the request and closes its connection.
        """
        response = await self._send(call, stream=False)
        data = _json_or_none(response)
        if not response.is_success:
            raise _status_error(call, response, data)
        if not isinstance(data, Mapping):
            raise _fail(call, TransientError("the provider's answer was not a JSON object"))
        headers = normalize_headers(response.headers)
        if data.get("error") is not None and not data.get("data"):
            code = data["error"].get("code") if isinstance(data["error"], Mapping) else None
            status = code if isinstance(code, int) and 400 <= code <= 599 else None
            raise _fail(call, provider_error(status, body=data, headers=headers))
        vectors = _vectors(data.get("data"))
        if vectors is None:
            raise _fail(call, TransientError("the provider's answer held no embedding vectors"))
        model = data.get("model")
        return ProviderEmbedding(
            vectors=vectors,
            usage=_usage(data.get("usage")),
            model=model if isinstance(model, str) and model else call.model,
            headers=headers,
            raw=data,
        )

    async def open_stream(self, call: ProviderCall) -> OpenAICompatStream:
        """Start a streamed call; returns once the provider has answered with a 2xx.

        Asks for a final usage chunk (``stream_options.include_usage``).

        Raises:
          The same errors as :meth:`complete`.

        Cancellation abandons the request and closes its connection.
        """
        response = await self._send(call, stream=True)
        if response.is_success:
            return OpenAICompatStream(call, response)
        body = None
        try:
            await response.aread()
            body = _json_or_none(response)
        except httpx.RequestError:
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
        error = _status_error(call, response, body)
        if self._adapt_to_refusal(call, error):
            return await self.open_stream(call)
        raise error

    async def aclose(self) -> None:
        """Close the connections this provider opened (not a client passed in)."""
        client, self._client = self._client, None
        transport, self._transport = self._transport, None
        if client is not None:
            await client.aclose()
        if transport is not None:
            await transport.aclose()

    def prepare(self) -> None:
        """Make the connection pool now. It blocks (loading the CA bundle takes a
        tenth of a second or more): :class:`~maxllm_gate.maxllm_gate` calls it in a
        worker thread at start, so that the first calls do not stall the loop.
        """
        self._sender()

    def _sender(self) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
        """What sends a request and returns its response, its body still to read;
        the pool is made on first use (anew after aclose)."""
        if self._lent is not None:
            return functools.partial(self._lent.send, stream=True)
        if self._client is None and self._transport is None:
            tls = httpx.create_ssl_context()  # one TLS context (CA bundle) for all keys
            if _proxies_in_environment():
                limits = httpx.Limits(max_connections=self._max_connections)
                self._client = httpx.AsyncClient(timeout=self._timeout, limits=limits, verify=tls)
            else:
                self._transport = Http11Transport(
                    ssl_context=tls, max_connections=self._max_connections
                )
        if self._client is not None:
            return functools.partial(self._client.send, stream=True)
        assert self._transport is not None
        return self._transport.handle_async_request

    def _request(self, call: ProviderCall, *, stream: bool) -> httpx.Request:
        key = call.key
        body: dict[str, Any]
        if call.input is not None:
            url = self._url(key, "embeddings")
            body = {"model": call.model, "input": call.input, **call.params}
            body["encoding_format"] = "float"
        else:
            url = self._url(key, "chat/completions")
            body = {"model": call.model, "messages": call.messages, **call.params}
        refused = self._refused.get((key.api_base, key.provider, call.model))
        if refused:
            if "max_tokens" in refused and "max_tokens" in body:
                body["max_completion_tokens"] = body.pop("max_tokens")
            if "temperature" in refused and "temperature" in call.defaults:
                del body["temperature"]
        if stream:
            body["stream"] = True
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        try:
            content = json.dumps(
                body, ensure_ascii=False, allow_nan=False, separators=(",", ":")
            ).encode()
        except (TypeError, ValueError) as exc:  # ValueError: NaN, or a lone surrogate
            problem = f"the request is not JSON-serializable: {type(exc).__name__}: {exc}"
            raise _fail(call, BadRequestError(problem)) from None
        headers = {
            "authorization": f"Bearer {key.api_key}",
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
            # The same on every attempt of one request: lets the provider (and the
            # fake one in tests) tell a retry from a new request.
            "x-client-request-id": call.request_id,
        }
        # A client passed in applies its own timeouts.
        extensions = {} if self._lent is not None else {"timeout": self._timeout.as_dict()}
        return httpx.Request("POST", url, content=content, headers=headers, extensions=extensions)

    def _adapt_to_refusal(self, call: ProviderCall, error: ProviderError) -> bool:
        """Whether the model refused a parameter that can be sent another way; if so,
        this model's calls (at this endpoint) send it that way from now on (the caller
        sends again).

        OpenAI's reasoning models (o-series, gpt-5) refuse ``max_tokens``, which they
        take as ``max_completion_tokens``, and any ``temperature`` but 1: one the
        client filled in from its config is left out, one the caller asked for is not.
        """
        refusal = error.status_code == 400 and error.code in _REFUSAL_CODES
        param = error.param if refusal else None
        if param not in ("max_tokens", "temperature"):
            return False
        if param == "temperature" and "temperature" not in call.defaults:
            return False
        where = (call.key.api_base, call.key.provider, call.model)
        refused = self._refused.get(where, frozenset())
        if param in refused:
            return False
        self._refused[where] = refused | {param}
        return True

    def _url(self, key: KeyConfig, path: str) -> httpx.URL:
        base = key.api_base.rstrip("/") if key.api_base else BASE_URLS.get(key.provider.lower())
        if base is None:
            raise ConfigError(
                f"key {key.key_id}: provider {key.provider!r} has no default base URL "
                "for the openai_compat transport; set api_base"
            )
        url = self._urls.get((base, path))
        if url is None:
            try:
                url = httpx.URL(f"{base}/{path}")
            except httpx.InvalidURL:
                url = None  # raised below, outside the except: the URL's error may quote a secret
            if url is None or url.scheme not in ("http", "https") or not url.host:
                raise ConfigError(f"key {key.key_id}: api_base is not a valid URL")
            self._urls[base, path] = url
        return url

    async def _send(self, call: ProviderCall, *, stream: bool) -> httpx.Response:
        request = self._request(call, stream=stream)
        send = self._sender()
        try:
            response = await send(request)
            if not stream:
                await _read_body(response)
            return response
        except httpx.RequestError as exc:  # timeouts, connection and protocol errors
            error = _transport_error(exc)
        raise _fail(call, error)  # outside the except: no __context__ holding the request


class OpenAICompatStream:
    """An open streamed completion: its server-sent events, parsed into `StreamChunk`\\ s.

    Iteration ends at ``data: [DONE]`` or the end of the body. A ``data:
    {"error": ...}`` event raises the classified `ProviderError`; a dropped
    connection, a `TransientError`. Always `aclose` it (at any point, any number
    of times): that releases the connection.
    """

    def __init__(self, call: ProviderCall, response: httpx.Response) -> None:
        self._call = call
        self._response = response
        self.headers: Mapping[str, str] = normalize_headers(response.headers)
        self._bytes: AsyncGenerator[bytes, None] | None = None  # made on the first read
        self._buffer = b""
        self._data: list[bytes] = []  # the data lines of the event being read
        self._ready: deque[StreamChunk] = deque()
        self._done = False  # no more chunks will come
        self._saw_done = False  # [DONE] came: the rest of the body is only its end
        self._closed = False
        self._reading = False

    def __aiter__(self) -> OpenAICompatStream:
        return self

    async def __anext__(self) -> StreamChunk:
        while not self._ready:
            if self._done or self._closed:
                raise StopAsyncIteration
            if self._bytes is None:
                self._bytes = cast("AsyncGenerator[bytes, None]", self._response.aiter_bytes())
            data, error = None, None
            self._reading = True
            try:
                data = await self._bytes.__anext__()
            except StopAsyncIteration:
                self._bytes = None  # finished: nothing left to finalize
            except httpx.RequestError as exc:  # ReadTimeout, RemoteProtocolError, ...
                self._bytes, error = None, _transport_error(exc)
            finally:
                self._reading = False
            if self._closed:  # aclose() ran meanwhile, and left the bytes to us
                await self._finish_bytes()
                raise StopAsyncIteration
            if error is not None:
                self._done = True
                raise _fail(self._call, error)
            if data is None:
                self._feed([self._buffer, b""])  # a last line without newline
                self._done = True
            else:
                *lines, self._buffer = (self._buffer + data).split(b"\n")
                self._feed(lines)
        return self._ready.popleft()

    def _feed(self, lines: list[bytes]) -> None:
        for line in lines:
            if self._done:
                return
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                value = line[5:].removeprefix(b" ")
                if value == b"[DONE]" and not self._data:
                    self._done = self._saw_done = True
                    return
                self._data.append(value)
                try:  # servers send one line per event: take it without waiting for its end
                    event = json.loads(b"\n".join(self._data))
                except ValueError:
                    continue  # more lines to come, or a bad event judged at its end
            elif line or not self._data:  # a comment, another field, or nothing to end
                continue
            else:
                try:
                    event = json.loads(b"\n".join(self._data))
                except ValueError:
                    event = None
            self._data.clear()
            self._ready.append(self._chunk(event))

    def _chunk(self, event: Any) -> StreamChunk:
        error = (
            _error_in(self._call, event, self.headers)
            if isinstance(event, Mapping)
            else _fail(self._call, TransientError("the provider sent an invalid stream event"))
        )
        if error is not None:
            self._done = True
            raise error
        choice = _first_choice(event)
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, Mapping) else None
        return StreamChunk(
            text=text if isinstance(text, str) else "",
            finish_reason=choice.get("finish_reason"),
            usage=_usage(event.get("usage")),
            raw=event,
        )

    async def aclose(self) -> None:
        """Close the response, releasing its connection. Safe at any time, and again.

        After ``[DONE]``, the rest of the body (normally just its end) is read
        first, so that the connection can be reused.
        """
        self._closed = True
        with anyio.CancelScope(shield=True):
            if not self._reading:  # else the reading task finishes the bytes
                await self._finish_bytes()
            await self._response.aclose()

    async def _finish_bytes(self) -> None:
        # Leave none of httpx's nested async generators to the garbage collector
        # (trio warns of those): each ends when an exception passes through it.
        chunks, self._bytes = self._bytes, None
        if chunks is None:
            return
        if self._saw_done:
            with anyio.move_on_after(_DRAIN_SECONDS):
                if await _exhaust(chunks):
                    return
        await self._response.aclose()  # closes the connection: the next read fails
        with anyio.CancelScope() as scope:
            scope.cancel()  # ... or is cancelled, like the read of a cancelled caller
            if await _exhaust(chunks):
                return
        await chunks.aclose()


async def _exhaust(chunks: AsyncGenerator[bytes, None]) -> bool:
    """Read ``chunks`` to its end or its error (both finish it); False if still going."""
    try:
        for _ in range(_DRAIN_READS):
            await chunks.__anext__()
    except Exception:  # StopAsyncIteration, or a read error: the body is over
        return True
    return False


def _fail(call: ProviderCall, error: ProviderError) -> ProviderError:
    error.key_id = call.key.key_id
    return error.scrub(call.key.api_key)  # a provider may echo the key back


async def _read_body(response: httpx.Response) -> None:
    """Read a response's whole body; on failure (or cancellation) close it first."""
    try:
        await response.aread()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await response.aclose()
        raise


def _proxies_in_environment() -> bool:
    """Whether the environment names a proxy for http or https, as httpx would use it."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


def _transport_error(exc: httpx.RequestError) -> TransientError:
    return TransientError(f"no answer from the provider: {type(exc).__name__}", status_code=None)


def _status_error(call: ProviderCall, response: httpx.Response, body: Any) -> ProviderError:
    return _fail(call, provider_error(response.status_code, body=body, headers=response.headers))


def _error_in(call: ProviderCall, data: Mapping[str, Any], headers: Any) -> ProviderError | None:
    """The error in a 2xx body or a stream event (OpenRouter, some proxies), if it is one."""
    if data.get("error") is None or data.get("choices"):
        return None
    code = data["error"].get("code") if isinstance(data["error"], Mapping) else None
    status = code if isinstance(code, int) and 400 <= code <= 599 else None
    return _fail(call, provider_error(status, body=data, headers=headers))


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:  # also UnicodeDecodeError
        return None


def _first_choice(data: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = data.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        return choices[0]
    return {}


def _vectors(data: Any) -> list[list[float]] | None:
    """The vectors of an embeddings answer's ``data``, ordered by their ``index``."""
    if not isinstance(data, list) or not all(isinstance(d, Mapping) for d in data):
        return None
    ordered = sorted(
        data, key=lambda d: d.get("index", 0) if isinstance(d.get("index"), int) else 0
    )
    vectors = [d.get("embedding") for d in ordered]
    if not all(isinstance(v, list) for v in vectors):
        return None
    return cast("list[list[float]]", vectors)


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, Mapping):
        return None
    prompt, completion, total = (raw.get(f"{n}_tokens") for n in ("prompt", "completion", "total"))
    prompt = prompt if isinstance(prompt, int) else 0
    completion = completion if isinstance(completion, int) else 0
    return Usage(prompt, completion, total if isinstance(total, int) else prompt + completion)
