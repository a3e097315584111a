"""The gateway's FastAPI app: OpenAI's chat completions and embeddings APIs in front
of one client.

Every request goes through the same `~maxllm_gate.client.maxllm_gate` the SDK
uses, started in the app's lifespan: the strategies, buckets, queues and
retries live there, once. This module only reads requests, writes OpenAI's
wire format (`~maxllm_gate.gateway.wire`), checks tokens and counts.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import importlib.resources
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from maxllm_gate._logging import get_logger
from maxllm_gate.client import maxllm_gate
from maxllm_gate.errors import GateError, NoKeyAvailableError, ProviderError
from maxllm_gate.gateway import wire
from maxllm_gate.gateway.auth import TokenCheck
from maxllm_gate.gateway.embedding_request import embeddings_body, parse_embeddings
from maxllm_gate.gateway.metrics import GatewayMetrics
from maxllm_gate.gateway.settings import GatewaySettings
from maxllm_gate.providers.base import StreamChunk
from maxllm_gate.responses import ChatResponse, EmbeddingResponse
from maxllm_gate.streams import ChatStream

__all__ = ["Gateway", "create_app"]

log = get_logger("maxllm_gate.gateway")

T = TypeVar("T")
R = TypeVar("R", ChatResponse, EmbeddingResponse)
_JSON = "application/json"
_CLIENT_CLOSED = 499  # nginx's code for "the client hung up first"; only ever in metrics


def create_app(
    client: maxllm_gate | None = None, settings: GatewaySettings | None = None
) -> FastAPI:
    """The gateway app over ``client`` (default: ``maxllm_gate.from_env()``), with
    ``settings`` (default: the ``GATEWAY_*`` variables of the environment and ``.env``).

    The client starts with the app's lifespan and shuts down (draining what is
    queued and in flight) with it.

    Raises:
      ConfigError: the environment's configuration is invalid, or it sets no
        gateway token without ``GATEWAY_ALLOW_UNAUTHENTICATED=true``.
    """
    settings = settings or GatewaySettings.from_env(dotenv_path=".env")
    return Gateway(client or maxllm_gate.from_env(), settings).app


class Gateway:
    """The routes, bound to one client, one set of tokens and one metrics registry."""

    def __init__(self, client: maxllm_gate, settings: GatewaySettings) -> None:
        self.client = client
        self.settings = settings
        self.auth = TokenCheck(
            settings.api_tokens, allow_unauthenticated=settings.allow_unauthenticated
        )
        self.models = frozenset(m for key in client.config.keys for m in key.models)
        self.metrics = GatewayMetrics(client, self.models)
        app = FastAPI(
            title="maxllm_gate gateway",
            lifespan=self._lifespan,
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
            # Starlette's redirect of /status/ to /status builds its Location from the
            # Host header: anyone could make the gateway point a client elsewhere.
            redirect_slashes=False,
        )
        app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
        # A plain ASGI route: FastAPI's request handling (dependencies, its Request and
        # Response round trip) costs more CPU than the gateway's own work per call.
        app.router.routes.append(
            Route("/v1/chat/completions", _AsgiRoute(self.chat_completions), methods=["POST"])
        )
        app.router.routes.append(
            Route("/v1/embeddings", _AsgiRoute(self.embeddings), methods=["POST"])
        )
        route = app.add_api_route
        route("/v1/models", self._guarded(self.list_models), methods=["GET"])
        # :path, since model names may hold a slash (openrouter/...).
        route("/v1/models/{model:path}", self.retrieve_model, methods=["GET"])
        # HEAD too: load balancers and uptime checks probe with it.
        route("/health", self.health, methods=["GET", "HEAD"])
        route("/ready", self.ready, methods=["GET", "HEAD"])
        # Reports of the keys' limits read them from Redis first, when shared: the
        # process's own view is only as fresh as its last call on each key.
        status, capacity = self.client.status, self.client.capacity
        route("/status", self._guarded(lambda _: status(), fresh=True), methods=["GET"])
        route("/capacity", self._guarded(lambda _: capacity(), fresh=True), methods=["GET"])
        route("/latency", self._guarded(lambda _: self.client.latency()), methods=["GET"])
        route("/scores", self._guarded(self.scores, fresh=True), methods=["GET"])
        dashboard_data = self._guarded(lambda _: self.metrics.dashboard(), fresh=True)
        route("/dashboard/data", dashboard_data, methods=["GET"])
        route("/metrics", self.prometheus, methods=["GET"])
        route("/dashboard", self.dashboard, methods=["GET"])
        self.app = app

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        if self.auth.open:
            log.warning(
                "the gateway accepts requests WITHOUT authentication "
                "(GATEWAY_ALLOW_UNAUTHENTICATED=true and no GATEWAY_API_KEYS)"
            )
        # Started in a task of its own, not with ``async with``: the server's signal
        # handler shuts it down while the connections are still open (see server.py).
        await self.client.start()
        try:
            log.info(
                "gateway ready",
                keys=len(self.client.config.keys),
                models=sorted(self.models),
                redis=self.client.config.redis_url is not None,
            )
            yield
        finally:
            await self.client.shutdown()
        log.info("gateway stopped")

    # -- chat completions ---------------------------------------------------------------

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/chat/completions``, plain or streamed, in OpenAI's format.

        A caller who hangs up before the answer abandons the request in the
        client: if it was deferred, it takes no capacity.
        """
        request = Request(scope, receive)
        model = "?"
        try:
            self._check_token(request)
            args = wire.parse_chat(await self._body(request), request.headers.get("x-priority"))
            model = args.model
            if not args.stream:
                ask = functools.partial(
                    self.client.chat,
                    args.model,
                    args.messages,
                    max_tokens=args.max_tokens,
                    temperature=args.temperature,
                    priority=args.priority,
                    timeout=args.timeout,
                    send_defaults=False,  # the provider gets what the caller sent, no more
                    **args.extra,
                )
                await self._answer(args.model, ask, _completion_body, scope, receive, send)
                return
            response = await self._open_stream(request, args)
        except ClientDisconnect:  # hung up before the whole body: no one to answer
            self._client_closed(model, "while sending the request body")
            return
        except Exception as exc:
            response = self._error(exc, model)
        await response(scope, receive, send)

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/embeddings`` in OpenAI's format, floats or base64.

        A caller who hangs up before the answer abandons the request in the client.
        """
        request = Request(scope, receive)
        model = "?"
        try:
            self._check_token(request)
            args = parse_embeddings(await self._body(request), request.headers.get("x-priority"))
            model = args.model
            ask = functools.partial(
                self.client.embed,
                args.model,
                args.input,
                dimensions=args.dimensions,
                priority=args.priority,
                timeout=args.timeout,
                **args.extra,
            )
            encoding = args.encoding_format

            def render(result: EmbeddingResponse) -> dict[str, Any]:
                return embeddings_body(result, encoding)

            await self._answer(model, ask, render, scope, receive, send)
            return
        except ClientDisconnect:  # hung up before the whole body: no one to answer
            self._client_closed(model, "while sending the request body")
            return
        except Exception as exc:
            response = self._error(exc, model)
        await response(scope, receive, send)

    async def _answer(
        self,
        model: str,
        ask: Callable[[], Awaitable[R]],
        render: Callable[[R], dict[str, Any]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """``ask()`` the client and send its answer as ``render`` writes it (or its error),
        unless the caller hangs up first."""
        async with _cancelled_on_hang_up(receive) as answer:
            try:
                result = await ask()
            except Exception as exc:
                response = self._error(exc, model)
            else:
                self.metrics.answered(result, model)
                body = wire.dumps(render(result))
                response = Response(body, media_type=_JSON, headers=_answer_headers(result))
            answer.started = True
            await response(scope, receive, send)
        if not answer.started:  # the caller hung up: its request was abandoned
            self._client_closed(model, "while the request waited or ran")

    async def _open_stream(self, request: Request, args: wire.ChatArgs) -> Response:
        """Queue the stream and wait for its first chunk, so that errors until then
        (a deferral's timeout, a refused request) still get their own status."""
        stream = await self.client.stream_chunks(
            args.model,
            args.messages,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            priority=args.priority,
            timeout=args.timeout,
            send_defaults=False,
            **args.extra,
        )
        try:
            first = await _until_hang_up(request.receive, lambda: anext(stream, None))
        except BaseException:
            await stream.aclose()
            raise
        if first is None and stream.response is None:  # the caller hung up
            await stream.aclose()
            self._client_closed(args.model, "while the stream waited to start")
            return Response(status_code=_CLIENT_CLOSED)
        return StreamingResponse(
            self._relay(stream, first, args),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-request-id": stream.request_id},
        )

    async def _relay(
        self, stream: ChatStream, first: StreamChunk | None, args: wire.ChatArgs
    ) -> AsyncIterator[bytes]:
        """The provider's chunks as server-sent events, as they come, then ``[DONE]``."""
        stream_id, created = f"chatcmpl-{stream.request_id}", int(time.time())
        usage = None
        role_sent = False
        chunk = first
        try:
            while chunk is not None:
                delta = wire.chunk_delta(chunk)
                if delta is not None:
                    if not role_sent:
                        delta, role_sent = {"role": "assistant", **delta}, True
                    yield wire.chunk_event(
                        stream_id,
                        created,
                        args.model,
                        delta,
                        chunk.finish_reason,
                        args.include_usage,
                        wire.chunk_logprobs(chunk),
                    )
                usage = chunk.usage or usage
                chunk = await anext(stream, None)
            if args.include_usage and usage is not None:
                yield wire.usage_event(stream_id, created, args.model, usage)
            yield wire.DONE_EVENT
            if stream.response is not None:
                self.metrics.answered(stream.response, args.model)
        except GateError as exc:  # after the 200: OpenAI's way is an error event
            error = wire.error_for(exc)
            self._count_error(args.model, error, exc)
            yield b"data: " + wire.error_body(str(error), error.type, error.code) + b"\n\n"
        except anyio.get_cancelled_exc_class():
            self._client_closed(args.model, "while the stream was relayed")
            raise
        finally:
            await stream.aclose()

    # -- other routes -------------------------------------------------------------------

    def list_models(self, request: Request) -> dict[str, Any]:
        """``GET /v1/models``: the models some usable key serves."""
        return {"object": "list", "data": [_model(m) for m in sorted(self._served())]}

    async def retrieve_model(self, request: Request) -> Response:
        """``GET /v1/models/{model}``: one model some usable key serves, else a 404."""
        try:
            self._check_token(request)
        except wire.WireError as exc:
            return _error_response(exc)
        model = request.path_params["model"]
        if model not in self._served():
            return _error_response(wire.model_not_found(model))
        return Response(wire.dumps(_model(model)), media_type=_JSON)

    def _served(self) -> set[str]:
        keys = self.client.status()["keys"].values()
        return {m for k in keys if k["enabled"] for m in k["models"]}

    def scores(self, request: Request) -> dict[str, Any]:
        return self.client.scores(request.query_params.get("model"))

    async def health(self, request: Request) -> Response:
        """Liveness: the process answers."""
        return Response(b'{"status":"ok"}', media_type=_JSON)

    async def ready(self, request: Request) -> Response:
        """Readiness: the scheduler runs, takes requests, and some key is usable."""
        status = self.client.status()
        usable = sum(1 for k in status["keys"].values() if k["enabled"] and k["running"])
        ready = status["accepting"] and usable > 0
        body = {"ready": ready, "accepting": status["accepting"], "usable_keys": usable}
        return Response(wire.dumps(body), status_code=200 if ready else 503, media_type=_JSON)

    async def prometheus(self, request: Request) -> Response:
        """``GET /metrics`` in Prometheus' text format, or OpenMetrics when the
        ``Accept`` header asks for it (as Prometheus does, by default)."""
        try:
            self._check_token(request)
        except wire.WireError as exc:
            return _error_response(exc)
        await self.client.refresh_shared_state()
        body, content_type = self.metrics.render(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    async def dashboard(self, request: Request) -> Response:
        """The dashboard page; its data comes from ``/dashboard/data`` (token needed).

        Its Content-Security-Policy lets it run its own script only and fetch from
        the gateway only, and no other site may frame it.
        """
        page, policy = _dashboard_page()
        headers = {
            "content-security-policy": policy,
            "x-frame-options": "DENY",
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
        }
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    # -- helpers ------------------------------------------------------------------------

    def _guarded(
        self, view: Callable[[Request], Any], *, fresh: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """A JSON route behind the token check; with ``fresh``, on the shared state
        of the keys' limits as of now (`maxllm_gate.refresh_shared_state`)."""

        async def endpoint(request: Request) -> Response:
            try:
                self._check_token(request)
            except wire.WireError as exc:
                return _error_response(exc)
            if fresh:
                await self.client.refresh_shared_state()
            return Response(wire.dumps(_finite(view(request))), media_type=_JSON)

        endpoint.__name__ = getattr(view, "__name__", "endpoint")
        return endpoint

    def _check_token(self, request: Request) -> None:
        if not self.auth.allows(request.headers.get("authorization")):
            raise wire.WireError(
                401,
                "Invalid or missing gateway token: send 'Authorization: Bearer <token>' "
                "with one of GATEWAY_API_KEYS.",
                type_="invalid_request_error",
                code="invalid_api_key",
            )

    async def _body(self, request: Request) -> bytes:
        """The body, refused with a 413 past ``max_body_bytes`` (even if chunked), and
        with a 408 if it takes longer than ``body_timeout`` to arrive."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        parts, size = [], 0
        with anyio.move_on_after(self.settings.body_timeout):
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise _too_large(limit)
                parts.append(part)
            return b"".join(parts)
        raise wire.WireError(
            408,
            f"The request body did not arrive within {self.settings.body_timeout:g} seconds "
            "(GATEWAY_BODY_TIMEOUT).",
            type_="invalid_request_error",
            code="body_timeout",
        )

    def _error(self, exc: Exception, model: str) -> Response:
        if not isinstance(exc, wire.WireError | GateError):
            log.error("gateway error", error=exc)
        known = not isinstance(exc, NoKeyAvailableError) or model in self.models
        error = wire.error_for(exc, known_model=known, model=model)
        self._count_error(model, error, exc)
        response = _error_response(error)
        if error.status == 503:
            response.headers["retry-after"] = str(self.settings.retry_after)
        return response

    def _client_closed(self, model: str, when: str) -> None:
        """Count a caller who hung up first: nginx's 499, a fact of life, not an error."""
        message = f"client closed the connection {when}"
        log.info(message, model=self.metrics.model_label(model))
        self.metrics.failed(model, _CLIENT_CLOSED, "client_closed", message, None)

    def _count_error(self, model: str, error: wire.WireError, exc: BaseException) -> None:
        key_id = exc.key_id if isinstance(exc, ProviderError) else None
        kind = error.code or error.type
        self.metrics.failed(model, error.status, kind, str(error), key_id)


class _AsgiRoute:
    """An ASGI app as a Starlette route's endpoint (a plain method would be wrapped
    as a request-response function)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _Answer:
    """Whether the answer to a watched request has started (a hang-up then cancels nothing)."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False


@contextlib.asynccontextmanager
async def _cancelled_on_hang_up(receive: Receive) -> AsyncIterator[_Answer]:
    """Run the block, cancelled if the caller hangs up before it sets ``started``.

    Cancelling abandons the request in the client: a caller who hung up while
    deferred takes no capacity. ASGI servers report ``http.disconnect`` when the
    caller hangs up, and also once the answer has been sent: that ends the watch
    without cancelling it, which under asyncio costs more than the rest of the
    watch. The block must catch its exceptions: trio would wrap them in a group.
    """
    answer = _Answer()
    watching = True
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal watching
            while (await receive())["type"] != "http.disconnect":
                pass
            watching = False
            if not answer.started:
                tg.cancel_scope.cancel()

        tg.start_soon(watch)
        yield answer
        await anyio.lowlevel.checkpoint()  # lets the watch take the http.disconnect
        if watching:  # a server that does not wake a pending receive after the answer
            tg.cancel_scope.cancel()


async def _until_hang_up(receive: Receive, call: Callable[[], Awaitable[T]]) -> T | None:
    """``await call()``, cancelled if the caller hangs up first (then None)."""
    result: T | None = None
    error: Exception | None = None
    async with _cancelled_on_hang_up(receive) as answer:
        try:
            result = await call()
        except Exception as exc:  # raised outside the group: trio would wrap it
            error = exc
        answer.started = True
    if error is not None:
        raise error
    return result


@functools.cache
def _dashboard_page() -> tuple[bytes, str]:
    """The dashboard's HTML, and a Content-Security-Policy that allows its one inline
    script by hash (styles inline: its bars are sized by style attributes)."""
    page = importlib.resources.files("maxllm_gate.gateway").joinpath("dashboard.html")
    html = page.read_bytes()
    scripts = re.findall(rb"<script>(.*?)</script>", html, re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in scripts
    )
    policy = (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return html, policy


def _completion_body(result: ChatResponse) -> dict[str, Any]:
    return wire.completion_body(result, int(time.time()))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "maxllm_gate"}


def _answer_headers(response: Any) -> dict[str, str]:
    return {
        "x-request-id": response.request_id,
        "x-gate-key-id": response.key_used,
        "x-gate-attempts": str(response.attempts),
        "x-gate-queue-ms": f"{response.queue_time * 1000:.1f}",
    }


def _too_large(limit: int) -> wire.WireError:
    return wire.WireError(
        413,
        f"The request body is larger than {limit} bytes (GATEWAY_MAX_BODY_BYTES).",
        type_="invalid_request_error",
        code="request_too_large",
    )


def _error_response(error: wire.WireError) -> Response:
    body = wire.error_body(str(error), error.type, error.code, error.param)
    # After a 408 the rest of a slow body may still be on its way: no reuse.
    headers = {"connection": "close"} if error.status == 408 else None
    return Response(body, status_code=error.status, media_type=_JSON, headers=headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's own errors (404, 405) in OpenAI's error format."""
    message = f"{exc.detail}: {request.method} {request.url.path}"
    body = wire.error_body(message, "invalid_request_error", None)
    return Response(body, status_code=exc.status_code, media_type=_JSON, headers=exc.headers)


def _finite(data: Any) -> Any:
    """``data`` with infinities and NaNs as None: JSON has no such numbers."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(value) for value in data]
    return data
