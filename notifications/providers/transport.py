"""A lean HTTP/1.1 keep-alive transport for ``httpx.AsyncClient`` on plain asyncio streams.

It keeps httpx's API, request building, auth, timeouts and exception types and replaces only the wire:
an O(1) LIFO pool of idle connections per origin, a semaphore for the connection limit, and a small
HTTP/1.1 response reader (Content-Length, chunked, read-to-close). HTTP/1.1 over TCP or TLS with
in-memory bodies only; proxies from the environment stay with httpx's own mounts, and HTTP/2 (APNs) uses
httpx's stock transport. Why: docs/architecture.md, "Delivery".
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from typing import Any

import httpx

#: Response head limit (status line + headers); providers send a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
STREAM_LIMIT = 256 * 1024


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, keepalive_expiry: float) -> bool:
        # asyncio reads continuously, so a peer that closed an idle socket has already fed EOF.
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and self.reader.exception() is None
            and now - self.idle_since < keepalive_expiry
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Timeout:
    """One phase's deadline, mapped to the matching httpx exception."""

    __slots__ = ("error", "seconds")

    def __init__(self, seconds: float | None, error: type[httpx.TimeoutException]) -> None:
        self.seconds = seconds
        self.error = error

    async def run(self, awaitable: Any, request: httpx.Request) -> Any:
        if self.seconds is None:
            return await awaitable
        try:
            async with asyncio.timeout(self.seconds):
                return await awaitable
        except TimeoutError as exc:
            raise self.error(f"{self.error.__name__} after {self.seconds}s", request=request) from exc


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class Http1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive: at most ``max_connections`` requests in flight (and sockets open)."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        keepalive_expiry: float = 5.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.max_connections = max(1, int(max_connections))
        self.keepalive_expiry = keepalive_expiry
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None
        self._slots = asyncio.Semaphore(self.max_connections)
        self._idle: dict[tuple[bytes, bytes, int], deque[_Connection]] = {}
        self._closed = False
        self.connections_opened = 0  # sockets opened over the transport's life (observability, tests)

    # ------------------------------------------------------------------------------------- pool
    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context(verify=self._verify)
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    def _take_idle(self, origin: tuple[bytes, bytes, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # LIFO: the warmest socket; stale ones age out at the left
            if connection.usable(now, self.keepalive_expiry):
                return connection
            connection.close()
        return None

    async def _connect(self, origin: tuple[bytes, bytes, int], request: httpx.Request, timeout: float | None):
        scheme, host, port = origin
        hostname = host.decode("ascii")
        secure = scheme == b"https"
        try:
            reader, writer = await _Timeout(timeout, httpx.ConnectTimeout).run(
                asyncio.open_connection(
                    hostname,
                    port,
                    ssl=self._ssl_context() if secure else None,
                    server_hostname=hostname if secure else None,
                    limit=STREAM_LIMIT,
                ),
                request,
            )
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or repr(exc), request=request) from exc
        self.connections_opened += 1
        return _Connection(reader, writer)

    # ------------------------------------------------------------------------------------- exchange
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("transport closed", request=request)
        timeouts = request.extensions.get("timeout") or {}
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}", request=request)
        port = url.port or (443 if scheme == b"https" else 80)
        origin = (scheme, url.raw_host, port)
        body = await request.aread()
        head = self._request_head(request)

        await _Timeout(timeouts.get("pool"), httpx.PoolTimeout).run(self._slots.acquire(), request)
        try:
            connection = self._take_idle(origin)
            if connection is None:
                connection = await self._connect(origin, request, timeouts.get("connect"))
            try:
                await self._write(connection, head + body if len(body) < 65536 else head, request, timeouts)
                if len(body) >= 65536:
                    await self._write(connection, body, request, timeouts)
                status, reason, headers, content, keep_alive = await _Timeout(
                    timeouts.get("read"), httpx.ReadTimeout
                ).run(self._read_response(connection.reader, request), request)
            except BaseException:
                connection.close()  # half-used socket (error, timeout, cancellation): never reuse
                raise
            if keep_alive and not self._closed:
                connection.idle_since = time.monotonic()
                self._idle.setdefault(origin, deque()).append(connection)
            else:
                connection.close()
        finally:
            self._slots.release()
        return httpx.Response(
            status,
            headers=headers,
            content=content,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    @staticmethod
    def _request_head(request: httpx.Request) -> bytes:
        target = request.url.raw_path or b"/"
        lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
                raise httpx.LocalProtocolError(f"illegal header {name!r}", request=request)
            lines.append(name + b": " + value + b"\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _write(self, connection: _Connection, data: bytes, request: httpx.Request, timeouts: dict) -> None:
        try:
            connection.writer.write(data)
            await _Timeout(timeouts.get("write"), httpx.WriteTimeout).run(connection.writer.drain(), request)
        except (ConnectionError, OSError) as exc:
            raise httpx.WriteError(str(exc) or repr(exc), request=request) from exc

    async def _read_response(
        self, reader: asyncio.StreamReader, request: httpx.Request
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
        try:
            while True:
                status, reason, version, headers = await self._read_head(reader, request)
                if not 100 <= status < 200 or status == 101:
                    break  # skip interim 1xx answers (100 Continue, 103 Early Hints)
            keep_alive = self._keep_alive(version, headers)
            if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                return status, reason, headers, b"", keep_alive
            encoding = _header(headers, b"transfer-encoding")
            if encoding is not None and b"chunked" in encoding.lower():
                return status, reason, headers, await self._read_chunked(reader), keep_alive
            length = _header(headers, b"content-length")
            if length is not None:
                try:
                    size = int(length)
                except ValueError:
                    raise httpx.RemoteProtocolError(f"bad Content-Length {length!r}", request=request) from None
                return status, reason, headers, await reader.readexactly(size), keep_alive
            return status, reason, headers, await reader.read(), False  # body delimited by close
        except asyncio.IncompleteReadError as exc:
            message = "server disconnected without sending a response" if not exc.partial else "incomplete response"
            raise httpx.RemoteProtocolError(message, request=request) from exc
        except asyncio.LimitOverrunError as exc:
            raise httpx.RemoteProtocolError("response head too large", request=request) from exc
        except ValueError as exc:  # a malformed chunk size
            raise httpx.RemoteProtocolError(f"malformed response: {exc}", request=request) from exc
        except (ConnectionError, OSError) as exc:
            raise httpx.ReadError(str(exc) or repr(exc), request=request) from exc

    @staticmethod
    async def _read_head(
        reader: asyncio.StreamReader, request: httpx.Request
    ) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        raw = await reader.readuntil(b"\r\n\r\n")
        if len(raw) > MAX_HEAD_BYTES:
            raise httpx.RemoteProtocolError("response head too large", request=request)
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise httpx.RemoteProtocolError(f"bad status line {lines[0][:100]!r}", request=request)
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise httpx.RemoteProtocolError(f"bad header line {line[:100]!r}", request=request)
            headers.append((name, value.strip()))
        return int(parts[1]), parts[2] if len(parts) > 2 else b"", parts[0], headers

    @staticmethod
    def _keep_alive(version: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
        connection = (_header(headers, b"connection") or b"").lower()
        if version == b"HTTP/1.0":
            return b"keep-alive" in connection
        return b"close" not in connection

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the final CRLF
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()
