"""The lean HTTP/1.1 transport against a scripted asyncio server: framing, keep-alive, errors, timeouts."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest

from notifications.providers.transport import Http1Transport
from tests.providers.conftest import run

Responder = Callable[[bytes, int], Awaitable[bytes | None]]  # (request head+body, request number) -> raw reply


async def serve(responder: Responder) -> tuple[asyncio.Server, str, list[int]]:
    """A server answering each request with ``responder``'s raw bytes (None = hang up without answering)."""
    counter = [0]
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                counter[0] += 1
                reply = await responder(head + body, counter[0])
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if b"connection: close" in reply.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


def client(base_url: str, transport: Http1Transport, timeout: float = 2.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=timeout)


def test_keep_alive_reuses_one_socket_and_sends_the_request_verbatim() -> None:
    seen: list[bytes] = []

    async def responder(request: bytes, n: int) -> bytes:
        seen.append(request)
        body = b'{"n": %d}' % n
        return b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )

    async def scenario() -> None:
        server, url, connections = await serve(responder)
        transport = Http1Transport(max_connections=4)
        async with server, client(url, transport) as http:
            for i in range(5):
                response = await http.post("/v1/x?a=1", json={"i": i}, headers={"X-Id": f"id-{i}"})
                assert response.status_code == 201
                assert response.json() == {"n": i + 1}
                assert response.http_version == "HTTP/1.1"
                assert response.reason_phrase == "Created"
        assert transport.connections_opened == 1 and len(connections) == 1
        assert seen[0].startswith(b"POST /v1/x?a=1 HTTP/1.1\r\n")
        assert b"\r\nx-id: id-0\r\n" in seen[0].lower()
        assert seen[0].endswith(b'{"i":0}')

    run(scenario())


def test_chunked_close_delimited_gzip_and_interim_responses() -> None:
    async def responder(request: bytes, n: int) -> bytes:
        if n == 1:
            return (
                b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
            )
        if n == 2:
            packed = gzip.compress(b"zipped body")
            return b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(packed), packed)
        return b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"

    async def scenario() -> None:
        server, url, _ = await serve(responder)
        transport = Http1Transport()
        async with server, client(url, transport) as http:
            assert (await http.post("/")).text == "hello world"
            assert (await http.post("/")).text == "zipped body"
            closing = await http.post("/")
            assert closing.status_code == 204 and closing.content == b""
            assert (await http.post("/")).status_code == 204  # a new socket after Connection: close
        assert transport.connections_opened == 2

    run(scenario())


def test_read_to_close_body_and_http_1_0() -> None:
    async def responder(request: bytes, n: int) -> bytes:
        return b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nno length"

    async def scenario() -> None:
        server, url, _ = await serve(responder)
        async with server, client(url, Http1Transport()) as http:
            assert (await http.post("/")).text == "no length"

    run(scenario())


def test_server_hanging_up_is_a_remote_protocol_error_and_the_socket_is_dropped() -> None:
    async def responder(request: bytes, n: int) -> bytes | None:
        return None if n == 1 else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def scenario() -> None:
        server, url, _ = await serve(responder)
        transport = Http1Transport()
        async with server, client(url, transport) as http:
            with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
                await http.post("/")
            assert (await http.post("/")).text == "ok"
        assert transport.connections_opened == 2

    run(scenario())


def test_idle_socket_closed_by_the_server_is_not_reused() -> None:
    async def responder(request: bytes, n: int) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def scenario() -> None:
        server, url, _ = await serve(responder)
        transport = Http1Transport()
        async with client(url, transport) as http:
            assert (await http.post("/")).text == "ok"
            for idle in transport._idle.values():  # the server closes its side of the idle socket
                for connection in idle:
                    connection.reader.feed_eof()
            assert (await http.post("/")).text == "ok"
        server.close()
        assert transport.connections_opened == 2

    run(scenario())


def test_timeouts_and_connection_errors_map_to_httpx_exceptions() -> None:
    async def responder(request: bytes, n: int) -> bytes:
        await asyncio.sleep(1.0)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async def scenario() -> None:
        server, url, _ = await serve(responder)
        async with server, client(url, Http1Transport(), timeout=0.2) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post("/")
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            free_port = probe.getsockname()[1]
        async with client(f"http://127.0.0.1:{free_port}", Http1Transport()) as http:
            with pytest.raises(httpx.ConnectError):
                await http.post("/")

    run(scenario())


def test_pool_limit_queues_instead_of_opening_more_sockets() -> None:
    async def responder(request: bytes, n: int) -> bytes:
        await asyncio.sleep(0.05)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async def scenario() -> None:
        server, url, connections = await serve(responder)
        transport = Http1Transport(max_connections=3)
        async with server, client(url, transport) as http:
            responses = await asyncio.gather(*(http.post("/") for _ in range(12)))
        assert all(r.status_code == 200 for r in responses)
        assert transport.connections_opened == 3 == len(connections)

    run(scenario())


def test_pool_timeout_and_bad_responses() -> None:
    async def slow(request: bytes, n: int) -> bytes:
        await asyncio.sleep(0.5)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async def garbage(request: bytes, n: int) -> bytes:
        return b"SMTP/9 what\r\n\r\n"

    async def scenario() -> None:
        server, url, _ = await serve(slow)
        timeout = httpx.Timeout(5.0, pool=0.1)
        async with (
            server,
            httpx.AsyncClient(base_url=url, transport=Http1Transport(max_connections=1), timeout=timeout) as http,
        ):
            results = await asyncio.gather(http.post("/"), http.post("/"), return_exceptions=True)
            assert any(isinstance(r, httpx.PoolTimeout) for r in results)
        server, url, _ = await serve(garbage)
        async with server, client(url, Http1Transport()) as http:
            with pytest.raises(httpx.RemoteProtocolError, match="bad status line"):
                await http.post("/")
        with pytest.raises(httpx.UnsupportedProtocol):
            await Http1Transport().handle_async_request(httpx.Request("GET", "ftp://example.com/"))

    run(scenario())
