"""HTTP/2 cleartext (prior knowledge) server connection loop built on ``h2`` and asyncio streams.

Each request stream is handled in its own task so that slow (latency-injected) requests do not
block the other streams multiplexed on the connection, like a real APNs gateway.  Response bodies
respect HTTP/2 flow control, so large control-API answers are fine too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from provider_sandbox.messages import Handler, Request, Response

log = logging.getLogger("provider_sandbox.http2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
READ_SIZE = 64 * 1024
MAX_BODY = 32 * 1024 * 1024


@dataclass
class _Stream:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)


class _H2Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.reader, self.writer, self.handler = reader, writer, handler
        self.streams: dict[int, _Stream] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.window_open = asyncio.Event()
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def run(self, initial: bytes) -> None:
        self.conn.initiate_connection()
        self.flush()
        data = initial
        try:
            while not self.closed:
                if not data:
                    data = await self.reader.read(READ_SIZE)
                    if not data:
                        break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    self.flush()
                    break
                data = b""
                for event in events:
                    self._dispatch(event)
                self.flush()
                await self.writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed = True
            self.window_open.set()
            for task in list(self.tasks):
                task.cancel()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.streams[event.stream_id] = _Stream(headers=list(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if stream is not None:
                stream.body.extend(event.data)
                if len(stream.body) > MAX_BODY:
                    self.conn.reset_stream(event.stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
                    self.streams.pop(event.stream_id, None)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                task = asyncio.create_task(self._respond(event.stream_id, stream))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(event.stream_id, None)
            self.window_open.set()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window_open.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    async def _respond(self, stream_id: int, stream: _Stream) -> None:
        pseudo = {k: v for k, v in stream.headers if k.startswith(":")}
        headers: dict[str, str] = {}
        for name, value in stream.headers:
            if not name.startswith(":"):
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if ":authority" in pseudo and "host" not in headers:
            headers["host"] = pseudo[":authority"]
        request = Request(
            method=pseudo.get(":method", "GET"),
            target=pseudo.get(":path", "/"),
            headers=headers,
            body=bytes(stream.body),
            http_version="2",
        )
        try:
            response = await self.handler(request)
        except Exception:
            log.exception("sandbox handler failed for %s %s", request.method, request.target)
            response = Response.json(500, {"reason": "InternalServerError"})
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            await self._send(stream_id, response)

    async def _send(self, stream_id: int, response: Response) -> None:
        if self.closed:
            return
        out_headers = [(":status", str(response.status))]
        skip = ("connection", "content-length")
        out_headers += [(k.lower(), v) for k, v in response.headers if k.lower() not in skip]
        out_headers.append(("content-length", str(len(response.body))))
        body = memoryview(response.body)
        self.conn.send_headers(stream_id, out_headers, end_stream=not body)
        self.flush()
        while body:
            if self.closed:
                return
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.window_open.clear()
                await self.window_open.wait()
                continue
            chunk, body = body[:window], body[window:]
            self.conn.send_data(stream_id, bytes(chunk), end_stream=not body)
            self.flush()


async def serve_http2(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler, initial: bytes = b""
) -> None:
    """Serve one HTTP/2 prior-knowledge connection; ``initial`` holds bytes already read (the preface)."""
    await _H2Connection(reader, writer, handler).run(initial)
