"""Protocol-neutral HTTP request/response objects shared by the HTTP/1.1 and HTTP/2 front ends."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson


@dataclass(slots=True)
class Request:
    """A fully received request (body included)."""

    method: str
    target: str  # raw request target, e.g. "/v3/mail/send?x=1"
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    http_version: str = "1.1"
    path: str = field(init=False)
    query: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        path, _, query = self.target.partition("?")
        self.path = path or "/"
        self.query = parse_qs(query, keep_blank_values=True) if query else {}

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self) -> Any:
        """Decode the body as JSON (raises ``orjson.JSONDecodeError``, a ``ValueError``)."""
        return orjson.loads(self.body)


@dataclass(slots=True)
class Response:
    """A response to send back; header names are sent as given (HTTP/2 lower-cases them)."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(
        cls,
        status: int,
        payload: Any,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
    ) -> Response:
        return cls(status, orjson.dumps(payload), [("Content-Type", content_type), *headers])

    @classmethod
    def empty(cls, status: int, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, b"", list(headers))

    def header(self, name: str) -> str | None:
        low = name.lower()
        for key, value in self.headers:
            if key.lower() == low:
                return value
        return None


Handler = Callable[[Request], Awaitable[Response]]


class _DateCache:
    """``Date`` header value, formatted at most once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True)
        return self._value


http_date = _DateCache().get
