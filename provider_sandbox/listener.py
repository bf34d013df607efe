"""TCP listeners: bind a port, route each connection to HTTP/1.1 or HTTP/2, close cleanly on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from provider_sandbox.http1 import serve_http1
from provider_sandbox.http2 import PREFACE, serve_http2
from provider_sandbox.messages import Handler

log = logging.getLogger("provider_sandbox.listener")


class HttpListener:
    """One listening socket serving ``handler``.

    With ``http2=True`` the first bytes of every connection are sniffed: the HTTP/2 client preface
    selects HTTP/2 (prior knowledge, like APNs clients use), anything else is served as HTTP/1.1.
    """

    def __init__(self, handler: Handler, *, http2: bool = False, name: str = "http") -> None:
        self.handler = handler
        self.http2 = http2
        self.name = name
        self.server: asyncio.Server | None = None
        self.port: int | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._on_connection, host, port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            initial = b""
            if self.http2:
                while len(initial) < len(PREFACE) and PREFACE.startswith(initial):
                    chunk = await reader.read(len(PREFACE) - len(initial))
                    if not chunk:
                        return
                    initial += chunk
                if initial == PREFACE:
                    await serve_http2(reader, writer, self.handler, initial=initial)
                    return
            await serve_http1(reader, writer, self.handler, initial=initial)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("%s connection failed", self.name)
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, close open (keep-alive) connections and wait for their tasks."""
        if self.server is None:
            return
        self.server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), timeout=timeout)
        self.server = None
