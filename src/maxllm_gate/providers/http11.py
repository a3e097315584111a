"""A lean HTTP/1.1 transport for httpx: keep-alive connections over anyio streams.

httpx's default stack costs the native transport about 1–2 ms of CPU per call:
the client's layers (auth, redirects, cookies, event hooks), httpcore's pool,
which examines every connection it holds on each request and release, and
h11. This transport keeps what the native transport needs and no more:

- a stack of idle connections per origin (the most recently used first), so
  finding one costs the same with 1 or 1,000 connections open;
- one write per request; a small parser for the status line, the headers and
  the body (``content-length``, chunked, or up to the connection's end), which
  hands over each piece of a body as it arrives (server-sent events);
- httpx's timeouts (``request.extensions["timeout"]``: connect, write, each
  read, and waiting for a free connection) and httpx's exceptions, so callers
  handle it like any other transport.

Plain ``http`` and ``https`` only: no proxies, no HTTP/2, no ``Expect:
100-continue``. A body is read whole before it is sent.
"""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.abc
import httpx

__all__ = ["Http11Transport"]

_READ_SIZE = 65536
_MAX_HEAD = 64 * 1024  # status line and headers; more is not a sane answer
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_NO_BODY_STATUSES = frozenset({204, 304})
# Headers this transport writes itself: the body is sent whole, the connection kept.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})
# Errors that mean the connection broke (anyio's, or the socket's and TLS's own).
_STREAM_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, ssl.SSLError)

_Origin = tuple[bytes, str, int]


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive, for an `httpx.AsyncClient` or called directly.

    Args:
      ssl_context: for ``https`` origins (default: httpx's, made on first use).
      max_connections: requests in flight at once over all origins, each on its
        own connection; more wait for one to finish (up to the pool timeout).
      keepalive_expiry: seconds an idle connection is kept for reuse.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 1000,
        keepalive_expiry: float = 5.0,
    ) -> None:
        self._ssl_context = ssl_context
        self._slots = anyio.Semaphore(max_connections)
        self._keepalive_expiry = keepalive_expiry
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return its response once the headers have arrived;
        the body streams from the connection (close the response to release it).

        Raises:
          httpx.TransportError: the subclass for what failed (``ConnectError``,
            ``ReadTimeout``, ``RemoteProtocolError``, ``PoolTimeout``...).
        """
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme.decode()!r}")
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS[scheme])
        data = _serialize(request, await _body(request))
        await self._acquire_slot(timeouts.get("pool"))
        connection = None
        try:
            connection = await self._idle_connection(origin)
            if connection is None:
                connection = await self._connect(origin, timeouts.get("connect"))
            await connection.send(data, timeouts.get("write"))
            version, status, reason, headers = await connection.read_head(timeouts.get("read"))
            has_body = request.method != "HEAD" and status not in _NO_BODY_STATUSES
            body = _Body(connection, self, origin, timeouts.get("read"), version, headers, has_body)
        except BaseException:
            self._slots.release()
            if connection is not None:
                await connection.close()
            raise
        # From here on the body holds the connection and its slot, until it is closed.
        extensions = {"http_version": version, "reason_phrase": reason}
        content = body.read_buffered()
        if content is None:
            return httpx.Response(status, headers=headers, stream=body, extensions=extensions)
        await body.aclose()  # the whole body came with the head: no need to stream it
        return httpx.Response(status, headers=headers, content=content, extensions=extensions)

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their responses do."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for stack in idle.values():
            for connection in stack:
                await connection.close()

    async def _acquire_slot(self, timeout: float | None) -> None:
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no connection became free in time") from None

    async def _idle_connection(self, origin: _Origin) -> _Connection | None:
        """The most recently used idle connection to ``origin`` still good for a request."""
        stack = self._idle.get(origin)
        expired_before = anyio.current_time() - self._keepalive_expiry
        while stack:
            connection = stack.pop()
            if connection.idle_since >= expired_before and connection.is_usable():
                return connection
            await connection.close()
        return None

    async def _connect(self, origin: _Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        tls: dict[str, Any] = {}
        if scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()
            # Many servers end a connection without TLS's close_notify: not an error.
            tls = {"ssl_context": self._ssl_context, "tls_standard_compatible": False}
        try:
            with anyio.fail_after(timeout):
                stream = await anyio.connect_tcp(host, port, **tls)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except _STREAM_ERRORS as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        return _Connection(stream)

    async def _release(self, connection: _Connection, origin: _Origin, reusable: bool) -> None:
        """Take back the connection of a finished response."""
        self._slots.release()
        if not reusable or self._closed:
            await connection.close()
            return
        connection.idle_since = now = anyio.current_time()
        stack = self._idle.setdefault(origin, [])
        stack.append(connection)
        # The least recently used are at the bottom: close those idle too long.
        while stack[0].idle_since < now - self._keepalive_expiry:
            await stack.pop(0).close()


class _Connection:
    """One TCP (or TLS) connection: requests go out, responses are parsed from ``buffer``."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.socket: socket.socket | None = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self.buffer = b""
        self.idle_since = 0.0

    def is_usable(self) -> bool:
        """Whether an idle connection can take a request: open, with nothing to read
        (the server closing it, or sending garbage, makes it readable)."""
        if self.buffer:
            return False
        if self.socket is None:
            return True
        poll = select.poll()
        poll.register(self.socket, select.POLLIN)
        return not poll.poll(0)

    async def send(self, data: bytes, timeout: float | None) -> None:
        with _errors(httpx.WriteError, httpx.WriteTimeout, "writing"):
            with anyio.fail_after(timeout):
                await self.stream.send(data)

    async def receive(self, timeout: float | None) -> bytes:
        """The next bytes from the server; b"" at the end of the connection."""
        with _errors(httpx.ReadError, httpx.ReadTimeout, "reading"):
            try:
                with anyio.fail_after(timeout):
                    return await self.stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                return b""

    async def read_line(self, timeout: float | None, limit: int = _MAX_HEAD) -> bytes:
        """A line ending in CRLF, without it; RemoteProtocolError at the end of the
        connection or past ``limit`` bytes."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > limit:
                raise httpx.RemoteProtocolError("the server sent too long a line")
            await self.fill(timeout)
        line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
        return line

    async def fill(self, timeout: float | None) -> None:
        """Read more into ``buffer``; RemoteProtocolError at the end of the connection."""
        data = await self.receive(timeout)
        if not data:
            raise httpx.RemoteProtocolError("the server closed the connection mid-message")
        self.buffer += data

    async def read_head(
        self, timeout: float | None
    ) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
        """The version, status, reason and headers of the response (past any 1xx)."""
        while True:
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                if len(self.buffer) > _MAX_HEAD:
                    raise httpx.RemoteProtocolError("the response's headers are too long")
                data = await self.receive(timeout)
                if not data:
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection without sending a response"
                    )
                self.buffer += data
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            version, status, reason, headers = _parse_head(head)
            if status == 101:
                raise httpx.RemoteProtocolError("the server switched protocols")
            if not 100 <= status < 200:  # else informational (103 Early Hints...): more follows
                return version, status, reason, headers

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):  # it takes no time, and must happen
            await anyio.aclose_forcefully(self.stream)


class _Body(httpx.AsyncByteStream):
    """A response's body, read from its connection piece by piece as it arrives."""

    def __init__(
        self,
        connection: _Connection,
        pool: Http11Transport,
        origin: _Origin,
        timeout: float | None,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        has_body: bool,
    ) -> None:
        """Raises RemoteProtocolError if the headers frame the body in no valid way."""
        self._connection: _Connection | None = connection
        self._pool = pool
        self._origin = origin
        self._timeout = timeout
        self._keep_alive = version == b"HTTP/1.1"
        self._chunked = False
        self._chunks_seen = 0
        self._left: int | None = None  # bytes left of the body (or of this chunk), if known
        lengths = set()
        for name, value in headers:
            name = name.lower()
            if name == b"connection" and b"close" in value.lower():
                self._keep_alive = False
            elif name == b"transfer-encoding":
                self._chunked = value.lower().rstrip().endswith(b"chunked")
                if not self._chunked:
                    raise httpx.RemoteProtocolError("unsupported transfer-encoding")
            elif name == b"content-length":
                lengths.add(value.strip())
        if not has_body:
            self._left, self._chunked = 0, False
        elif self._chunked:
            self._left = 0  # the first chunk's size line comes next
        elif lengths:
            (length,) = lengths if len(lengths) == 1 else (b"",)
            if not length.isdigit():
                raise httpx.RemoteProtocolError("the response's content-length is invalid")
            self._left = int(length)
        else:
            self._keep_alive = False  # the body ends with the connection
        self._done = not self._chunked and self._left == 0

    def read_buffered(self) -> bytes | None:
        """The whole body if it has a length and has arrived already, else None."""
        connection = self._connection
        if connection is None or self._chunked or self._left is None:
            return None
        if len(connection.buffer) < self._left:
            return None
        content = connection.buffer[: self._left]
        connection.buffer = connection.buffer[self._left :]
        self._left, self._done = 0, True
        return content

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        if connection is None or self._done:
            raise StopAsyncIteration
        try:
            piece = await self._next_piece(connection)
        except BaseException:
            self._keep_alive = False
            await self.aclose()
            raise
        if piece is None:
            self._done = True
            await self.aclose()
            raise StopAsyncIteration
        return piece

    async def _next_piece(self, connection: _Connection) -> bytes | None:
        """The next bytes of the body, or None after its end."""
        if self._chunked and self._left == 0 and not await self._next_chunk(connection):
            return None
        if not connection.buffer:
            connection.buffer = await connection.receive(self._timeout)
            if not connection.buffer:
                if self._left is not None:
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection before the body's end"
                    )
                return None  # a body up to the connection's end
        piece = connection.buffer
        if self._left is not None:
            piece = piece[: self._left]
            self._left -= len(piece)
            self._done = self._left == 0 and not self._chunked
        connection.buffer = connection.buffer[len(piece) :]
        return piece

    async def _next_chunk(self, connection: _Connection) -> bool:
        """Read up to the next chunk's data: True, or False after the last chunk."""
        if self._chunks_seen and await connection.read_line(self._timeout):
            raise httpx.RemoteProtocolError("a chunk of the body does not end with CRLF")
        self._chunks_seen += 1
        size = await connection.read_line(self._timeout)
        try:
            self._left = int(size.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise httpx.RemoteProtocolError("a chunk's size is invalid") from None
        if self._left > 0:
            return True
        while await connection.read_line(self._timeout):  # trailers, up to an empty line
            pass
        return False

    async def aclose(self) -> None:
        """Give the connection back for reuse if the body was read whole, else close it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            reusable = self._done and self._keep_alive and not connection.buffer
            await self._pool._release(connection, self._origin, reusable)


async def _body(request: httpx.Request) -> bytes:
    try:
        return request.content
    except httpx.RequestNotRead:
        return await request.aread()


def _serialize(request: httpx.Request, body: bytes) -> bytes:
    """The request's head and body, in one piece for one write."""
    lines = [b"%s %s HTTP/1.1" % (request.method.encode("ascii"), request.url.raw_path)]
    lines += [b"%s: %s" % pair for pair in request.headers.raw if pair[0].lower() not in _FRAMING]
    if body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(b"content-length: %d" % len(body))
    head = b"\r\n".join(lines)
    breaks = len(lines) - 1
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
        raise httpx.LocalProtocolError("a header holds a line break")
    return head + b"\r\n\r\n" + body


def _parse_head(head: bytes) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
    """The version, status, reason and headers of a response's head."""
    status_line, *lines = head.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    status, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(status) != 3 or not status.isdigit():
        raise httpx.RemoteProtocolError("the server's answer is not HTTP/1.1")
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[-1:] in b" \t" or line[:1] in b" \t":
            raise httpx.RemoteProtocolError("the server sent an invalid header line")
        headers.append((name, value.strip(b" \t")))
    return version, int(status), reason, headers


@contextmanager
def _errors(
    failed: type[httpx.TransportError], timed_out: type[httpx.TransportError], doing: str
) -> Iterator[None]:
    """anyio's and the socket's errors as httpx's."""
    try:
        yield
    except TimeoutError:
        raise timed_out(f"timed out {doing}") from None
    except _STREAM_ERRORS as exc:
        raise failed(f"{type(exc).__name__} while {doing}: {exc}") from None
