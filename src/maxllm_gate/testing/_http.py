"""Just enough HTTP/1.1 server for the fake provider: h11 on an anyio byte stream.

One `Connection` per accepted socket serves its requests one after another
(keep-alive). While a handler runs, the connection also reads from the socket,
so that a client hanging up is noticed at once: the handler is then cancelled,
like a real server abandoning a request whose caller has gone.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus

import anyio
import anyio.abc
import attrs
import h11

__all__ = ["Connection", "Handler", "Request", "serve_connection"]

_READ_SIZE = 65536
_MAX_BODY = 32 * 1024 * 1024  # a fake needs no huge bodies; refuse rather than hoard memory
# Errors that only mean the peer went away or the socket is closed.
_TRANSPORT_ERRORS = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    OSError,
)

Headers = Iterable[tuple[str, str]]


@attrs.frozen
class Request:
    """One complete HTTP request: header names are lower case, the body is read in full."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


Handler = Callable[[Request, "Connection"], Awaitable[None]]


class Connection:
    """The server side of one HTTP/1.1 connection.

    A handler answers through it either at once (`respond`) or piece by piece
    (`start_response`, `send_data`, `end_response`; the body is then sent with
    chunked transfer encoding, which h11 picks because no length is given).
    """

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        self.disconnected = False

    # -- reading --------------------------------------------------------------------

    async def read_request(self) -> Request | None:
        """The next request, or None once the client closed or sent garbage."""
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                await self._reject(exc.error_status_hint, str(exc))
                return None
            if event is h11.NEED_DATA:
                await self._receive()
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_BODY:
                    await self._reject(413, "request body too large")
                    return None
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                target = head.target.decode("latin-1")
                return Request(
                    method=head.method.decode("ascii"),
                    path=target.split("?", 1)[0],
                    headers={k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers},
                    body=bytes(body),
                )
            else:  # ConnectionClosed, or PAUSED after a response we could not finish
                return None

    async def _receive(self) -> None:
        try:
            data = await self._stream.receive(_READ_SIZE)
        except _TRANSPORT_ERRORS:
            data = b""  # h11 reads b"" as end of file
        if not data:
            self.disconnected = True
        self._h11.receive_data(data)

    async def _reject(self, status: int, message: str) -> None:
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            headers = [("content-type", "text/plain"), ("connection", "close")]
            await self.respond(status, headers, message.encode())

    async def _watch_disconnect(self, scope: anyio.CancelScope) -> None:
        """Read while a handler runs; cancel it when the client hangs up.

        Anything that arrives meanwhile (a pipelined request) stays in h11's
        buffer for the next `read_request`.
        """
        while not self.disconnected:
            await self._receive()
        scope.cancel()

    # -- writing --------------------------------------------------------------------

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """Send a whole response with a content-length."""
        headers = [*headers, ("content-length", str(len(body)))]
        # One write for the whole answer: fewer syscalls, and no packet left waiting.
        data = self._h11.send(_response(status, headers))
        if body:
            data += self._h11.send(h11.Data(data=body))
        data += self._h11.send(h11.EndOfMessage())
        await self._stream.send(data)

    async def start_response(self, status: int, headers: Headers) -> None:
        """Send the status line and headers; the body follows with `send_data`."""
        await self._send(_response(status, headers))

    async def send_data(self, data: bytes) -> None:
        await self._send(h11.Data(data=data))

    async def end_response(self) -> None:
        await self._send(h11.EndOfMessage())

    async def _send(self, event: h11.Response | h11.Data | h11.EndOfMessage) -> None:
        data = self._h11.send(event)
        if data:
            await self._stream.send(data)

    async def reset(self) -> None:
        """Drop the connection with a TCP reset, as a crashing server or proxy does:
        whatever was not sent is lost, and the client sees the connection fail."""
        sock = self._stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if sock is not None:  # linger 0: close() sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.disconnected = True
        await self._stream.aclose()

    def _next_cycle(self) -> bool:
        """Get ready for the next request on this connection, if it can be reused."""
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            return True
        return False


def _response(status: int, headers: Headers) -> h11.Response:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return h11.Response(status_code=status, headers=list(headers), reason=reason)


async def serve_connection(stream: anyio.abc.ByteStream, handler: Handler) -> None:
    """Serve the requests of one connection until either side closes it.

    The handler must answer each request completely; if it does not (or the
    client disconnects meanwhile), the connection is closed. A client going
    away is never an error. Errors of the handler itself propagate.
    """
    async with stream:
        connection = Connection(stream)
        try:
            while True:
                request = await connection.read_request()
                if request is None:
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(connection._watch_disconnect, tg.cancel_scope)
                    try:
                        await handler(request, connection)
                    except _TRANSPORT_ERRORS:
                        connection.disconnected = True
                    finally:
                        tg.cancel_scope.cancel()
                if connection.disconnected or not connection._next_cycle():
                    return
        except _TRANSPORT_ERRORS:
            return
