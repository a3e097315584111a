"""The lean HTTP/1.1 transport against scripted servers: framing, reuse, errors, limits.

Real sockets need the real clock, so this module runs on plain asyncio and trio;
its timeouts are a few tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import anyio.streams.tls
import httpx
import pytest

from maxllm_gate.providers.http11 import Http11Transport

Script = Callable[[anyio.abc.SocketStream], Awaitable[None]]
CERTIFICATE = str(Path(__file__).with_name("localhost.pem"))
OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Server:
    """Answers each connection with ``script``; counts connections and keeps the requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.url = ""

    async def _serve(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await self.script(stream)


async def read_request(stream: anyio.abc.SocketStream) -> bytes:
    """One request (head and content-length body), or b"" at the end of the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return b""
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line for line in head.split(b"\r\n") if line.startswith(b"content-length:")]
    length = int(lengths[0].split(b":")[1]) if lengths else 0
    while len(body) < length:
        body += await stream.receive()
    return data


Serve = Callable[[Script], Awaitable[Server]]


def answering(*answers: bytes, close: bool = False) -> Script:
    """A script that answers each request on a connection with the next of ``answers``."""

    async def script(stream: anyio.abc.SocketStream) -> None:
        for answer in answers:
            if not await read_request(stream):
                return
            await stream.send(answer)
        if not close:
            await read_request(stream)  # then the end of the connection

    return script


async def silent(stream: anyio.abc.SocketStream) -> None:
    """Takes requests and never answers."""
    while await read_request(stream):
        pass


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    async with anyio.create_task_group() as tg:

        async def start(script: Script) -> Server:
            server = Server(script)
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            server.url = f"http://127.0.0.1:{port}/v1/x"
            tg.start_soon(listener.serve, server._serve)
            return server

        yield start
        tg.cancel_scope.cancel()


async def fetch(transport: Http11Transport, url: str, timeout: float = 5.0) -> httpx.Response:
    request = httpx.Request(
        "POST", url, content=b"{}", extensions={"timeout": httpx.Timeout(timeout).as_dict()}
    )
    response = await transport.handle_async_request(request)
    await response.aread()
    return response


@pytest.mark.anyio
async def test_a_request_goes_out_in_http11_and_its_connection_is_reused(serve: Serve) -> None:
    seen: list[bytes] = []

    async def script(stream: anyio.abc.SocketStream) -> None:
        while request := await read_request(stream):
            seen.append(request)
            await stream.send(OK)

    server = await serve(script)
    transport = Http11Transport()
    request = httpx.Request("POST", server.url + "?a=1", content=b'{"q":1}', headers={"x-id": "7"})
    response = await transport.handle_async_request(request)
    assert response.status_code == 200 and response.headers["content-type"] == "text/plain"
    assert await response.aread() == b"hello"
    assert (await fetch(transport, server.url)).content == b"hello"
    await transport.aclose()
    head = seen[0].split(b"\r\n")
    assert head[0] == b"POST /v1/x?a=1 HTTP/1.1"
    assert b"x-id: 7" in head and b"content-length: 7" in head
    assert seen[0].endswith(b'\r\n\r\n{"q":1}')
    assert server.connections == 1


@pytest.mark.anyio
async def test_bodies_framed_by_chunks_or_by_the_connections_end(serve: Serve) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\ntrailer: x\r\n\r\n"
    )
    empty = b"HTTP/1.1 204 No Content\r\n\r\n"
    head_only = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"  # the answer to a HEAD
    server = await serve(answering(chunked, empty, head_only, OK))
    transport = Http11Transport()
    assert (await fetch(transport, server.url)).content == b"hello world"
    response = await fetch(transport, server.url)
    assert response.status_code == 204 and response.content == b""
    response = await transport.handle_async_request(httpx.Request("HEAD", server.url))
    assert await response.aread() == b""
    assert (await fetch(transport, server.url)).content == b"hello"
    until_close = await serve(answering(b"HTTP/1.1 200 OK\r\n\r\nall of it", close=True))
    assert (await fetch(transport, until_close.url)).content == b"all of it"
    await transport.aclose()
    assert server.connections == 1


@pytest.mark.anyio
async def test_a_streamed_body_arrives_piece_by_piece(serve: Serve) -> None:
    step = anyio.Event()

    async def script(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
        await step.wait()
        await stream.send(b"7\r\nsecond\n\r\n0\r\n\r\n")
        await read_request(stream)

    server = await serve(script)
    transport = Http11Transport()
    response = await transport.handle_async_request(httpx.Request("POST", server.url))
    pieces = response.aiter_raw()
    assert await pieces.__anext__() == b"first\n"  # before the rest was even sent
    step.set()
    assert [piece async for piece in pieces] == [b"second\n"]
    await response.aclose()
    await transport.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"", "without sending a response"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", "before the body's end"),
        (b"SMTP ready\r\n\r\n", "not HTTP/1.1"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "invalid header line"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n", "content-length"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "chunk's size"),
    ],
)
async def test_broken_answers_are_protocol_errors(
    serve: Serve, answer: bytes, message: str
) -> None:
    server = await serve(answering(answer, close=True))
    transport = Http11Transport()
    with pytest.raises(httpx.RemoteProtocolError, match=message):
        await fetch(transport, server.url)
    assert transport._idle == {}  # a broken connection is never reused
    await transport.aclose()


@pytest.mark.anyio
async def test_a_connection_the_server_closed_while_idle_is_not_reused(serve: Serve) -> None:
    server = await serve(answering(OK, close=True))
    transport = Http11Transport()
    await fetch(transport, server.url)
    for _ in range(100):  # until the server's end of the connection has arrived
        (connection,) = transport._idle[next(iter(transport._idle))]
        if not connection.is_usable():
            break
        await anyio.sleep(0.001)
    assert (await fetch(transport, server.url)).content == b"hello"
    assert server.connections == 2
    await transport.aclose()


@pytest.mark.anyio
async def test_timeouts_and_refused_connections_are_httpx_errors(serve: Serve) -> None:
    server = await serve(silent)
    transport = Http11Transport(max_connections=1)
    with pytest.raises(httpx.ReadTimeout):
        await fetch(transport, server.url, timeout=0.05)
    request = httpx.Request("POST", server.url, extensions={"timeout": {"pool": 0.02}})
    await transport._slots.acquire()  # the one connection is busy
    with pytest.raises(httpx.PoolTimeout):
        await transport.handle_async_request(request)
    transport._slots.release()
    with pytest.raises(httpx.ConnectError):
        await fetch(transport, "http://127.0.0.1:1/v1")
    with pytest.raises(httpx.UnsupportedProtocol):
        await fetch(transport, "ftp://127.0.0.1/v1")
    with pytest.raises(httpx.LocalProtocolError):
        await transport.handle_async_request(
            httpx.Request("GET", server.url, headers={"x": "a\r\nInjected: 1"})
        )
    await transport.aclose()


@pytest.mark.anyio
async def test_cancelling_a_call_closes_its_connection_and_frees_its_slot(serve: Serve) -> None:
    server = await serve(silent)
    transport = Http11Transport(max_connections=1)
    with anyio.move_on_after(0.05):
        await fetch(transport, server.url)
    assert transport._idle == {}
    with pytest.raises(httpx.ReadTimeout):  # the slot is free again: this one is sent
        await fetch(transport, server.url, timeout=0.02)
    await transport.aclose()


@pytest.mark.anyio
async def test_https_goes_over_tls_with_the_given_context() -> None:
    # A self-signed certificate for 127.0.0.1, valid until 2125, trusted by the client only.
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(CERTIFICATE)
    client_context = ssl.create_default_context(cafile=CERTIFICATE)
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = tcp.extra(anyio.abc.SocketAttribute.local_port)
    listener = anyio.streams.tls.TLSListener(tcp, server_context, standard_compatible=False)
    server = Server(answering(OK, OK))
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server._serve)
        transport = Http11Transport(ssl_context=client_context)
        for _ in range(2):
            response = await fetch(transport, f"https://127.0.0.1:{port}/v1")
            assert response.content == b"hello"
        await transport.aclose()
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await fetch(Http11Transport(), f"https://127.0.0.1:{port}/v1")  # not trusted
        tg.cancel_scope.cancel()
    assert server.connections == 1  # reused; the refused handshake never got that far
