"""A small HTTP/1.1 server connection loop built on ``h11`` (keep-alive, Content-Length/chunked bodies)."""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

import h11

from provider_sandbox.messages import Handler, Request, Response, http_date

log = logging.getLogger("provider_sandbox.http1")

MAX_BODY = 32 * 1024 * 1024
READ_SIZE = 64 * 1024


class _BodyTooLarge(Exception):
    pass


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event | type:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(READ_SIZE)
        conn.receive_data(data)  # b"" signals EOF


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | None:
    event = await _next_event(conn, reader)
    if not isinstance(event, h11.Request):
        return None  # ConnectionClosed / PAUSED at EOF
    if conn.client_is_waiting_for_100_continue:
        writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
    headers: dict[str, str] = {}
    for raw_name, raw_value in event.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    chunks: list[bytes] = []
    size = 0
    while True:
        part = await _next_event(conn, reader)
        if isinstance(part, h11.Data):
            size += len(part.data)
            if size > MAX_BODY:
                raise _BodyTooLarge
            chunks.append(bytes(part.data))
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            return None
    return Request(
        method=event.method.decode("ascii"),
        target=event.target.decode("latin-1"),
        headers=headers,
        body=b"".join(chunks),
        http_version=event.http_version.decode("ascii"),
    )


def _serialize(conn: h11.Connection, response: Response) -> bytes:
    headers = [(k, v) for k, v in response.headers if k.lower() not in ("content-length", "connection")]
    headers.append(("Content-Length", str(len(response.body))))
    headers.append(("Date", http_date()))
    out = conn.send(h11.Response(status_code=response.status, headers=headers, reason=_reason(response.status)))
    if response.body:
        out += conn.send(h11.Data(data=response.body))
    out += conn.send(h11.EndOfMessage())
    return out


async def serve_http1(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler, initial: bytes = b""
) -> None:
    """Serve requests on one connection until the peer closes it (or asks to)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    if initial:
        conn.receive_data(initial)
    try:
        while True:
            try:
                request = await _read_request(conn, reader, writer)
            except (h11.RemoteProtocolError, _BodyTooLarge) as exc:
                status = 413 if isinstance(exc, _BodyTooLarge) else 400
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    body = Response.json(status, {"error": "bad request" if status == 400 else "body too large"})
                    body.headers.append(("Connection", "close"))
                    writer.write(_serialize(conn, body))
                    await writer.drain()
                return
            if request is None:
                return
            try:
                response = await handler(request)
            except Exception:
                log.exception("sandbox handler failed for %s %s", request.method, request.target)
                response = Response.json(500, {"error": "sandbox internal error"})
            writer.write(_serialize(conn, response))
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
