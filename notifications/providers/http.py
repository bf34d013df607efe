"""HTTP for adapters: the pooled client, resolved URLs, and reading a provider's answer (headers, body)."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from notifications.providers.results import truncate
from notifications.providers.transport import Http1Transport

#: Idle keep-alive sockets are dropped after this long: below the common server idle timeouts
#: (nginx 75 s, AWS ALB 60 s, many APIs 15-30 s) so a reused socket is rarely one the server closed.
KEEPALIVE_EXPIRY = 10.0


def build_http_client(
    *,
    base_url: str = "",
    timeout: float,
    max_connections: int,
    http2: bool = False,
    auth: httpx.Auth | tuple[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    follow_redirects: bool = False,
    lean_transport: bool = True,
) -> httpx.AsyncClient:
    """The one pooled client an adapter owns.

    HTTP/1.1 clients use :class:`~notifications.providers.transport.Http1Transport` (O(1) pooling; why:
    docs/architecture.md, "Delivery") unless ``lean_transport=False``. ``http2=True`` means
    HTTP/2 only (``http1=False``) on httpx's own transport: negotiated with ALPN over TLS, used with
    prior knowledge over cleartext (the APNs sandbox).
    """
    transport: httpx.AsyncBaseTransport | None = None
    if not http2 and lean_transport:
        transport = Http1Transport(max_connections=max_connections, keepalive_expiry=KEEPALIVE_EXPIRY)
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout),
        limits=limits,
        http1=not http2,
        http2=http2,
        auth=auth,
        headers=dict(headers or {}),
        follow_redirects=follow_redirects,
        transport=transport,
    )


def resolved_url(client: httpx.AsyncClient, path: str) -> httpx.URL:
    """`path` merged with the client's base URL once, as `client.build_request` would merge it.

    A send to a fixed endpoint then passes an absolute `httpx.URL`, which httpx takes as is instead of
    parsing and merging the path again on every request, a noticeable share of a send's CPU.
    """
    return client.build_request("POST", path).url


def header_value(headers: Mapping[str, str] | None, name: str) -> str | None:
    """Case-insensitive header lookup on httpx/requests headers or a plain dict."""
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def json_body(body: bytes | str | Mapping[str, Any] | None) -> Any:
    """The parsed JSON body, or None when it is empty or not JSON."""
    if body is None or isinstance(body, Mapping):
        return body
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def body_text(body: bytes | str | Mapping[str, Any] | None) -> str:
    if body is None:
        return ""
    if isinstance(body, Mapping):
        return truncate(orjson.dumps(body).decode())
    if isinstance(body, bytes):
        return truncate(body.decode("utf-8", "replace"))
    return truncate(body)
