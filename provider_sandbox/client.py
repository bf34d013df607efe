"""Synchronous (httpx) client for the ``/_sandbox/`` control API, for tests and benchmarks.

>>> sg = SandboxClient("http://127.0.0.1:18101")
>>> sg.configure(rate=50, latency={"kind": "uniform", "min_ms": 5, "max_ms": 20})
>>> ...  # drive the production adapter
>>> sg.stats()["max_1s_window"] <= 50
>>> [r["idempotency_key"] for r in sg.requests()]

For the SMTP sandbox use its companion control port (``smtp_control``), not the SMTP port.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx


class SandboxError(RuntimeError):
    """The control API answered an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"sandbox control API answered {status}: {body}")
        self.status = status
        self.body = body


class SandboxClient:
    """Talks to one provider sandbox's control API (HTTP/1.1, also on the APNs port)."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns_client = client is None
        self._http = client or httpx.Client(timeout=timeout)

    def _call(self, method: str, action: str, **kwargs: Any) -> Any:
        response = self._http.request(method, f"{self.base_url}/_sandbox/{action}", **kwargs)
        if response.status_code >= 400:
            raise SandboxError(response.status_code, response.text)
        return response.json()

    def health(self) -> dict[str, Any]:
        return self._call("GET", "health")

    def stats(self, window: float | None = None) -> dict[str, Any]:
        """Counters, ``duplicates``, ``max_1s_window`` (and ``max_window`` for ``window``), ``per_second``."""
        params = {"window": window} if window is not None else None
        return self._call("GET", "stats", params=params)

    def requests_page(
        self, since: int = 0, limit: int = 1000, recipient: str | None = None, raw: bool = False
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"since": since, "limit": limit}
        if recipient is not None:
            params["recipient"] = recipient
        if raw:
            params["raw"] = 1
        return self._call("GET", "requests", params=params)

    def requests(
        self, since: int = 0, limit: int = 1000, recipient: str | None = None, raw: bool = False
    ) -> list[dict[str, Any]]:
        """Recorded accepted requests with ``seq > since`` (oldest first)."""
        return self.requests_page(since, limit, recipient, raw)["requests"]

    def iter_requests(self, since: int = 0, page_size: int = 10_000) -> Iterator[dict[str, Any]]:
        """Every recorded request after ``since``, paging through the buffer."""
        while True:
            page = self.requests_page(since, page_size)
            yield from page["requests"]
            if page["count"] < page_size:
                return
            since = page["next_since"]

    def config(self) -> dict[str, Any]:
        return self._call("GET", "config")

    def configure(self, **cfg: Any) -> dict[str, Any]:
        """Partial runtime update of rate, burst, latency, latency_ms, errors, options and/or seed."""
        return self._call("POST", "config", json=cfg)

    def reset(self, *, config: bool = False) -> dict[str, Any]:
        """Clear records/counters/limiter/fail-N counters; ``config=True`` also restores startup config."""
        return self._call("POST", "reset", json={"config": config})

    def wait_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0, interval: float = 0.02
    ) -> dict[str, Any]:
        """Poll ``stats()`` until ``predicate(stats)`` holds; returns the last stats (raises on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() >= deadline:
                raise TimeoutError(f"sandbox condition not met within {timeout}s; last stats: {stats}")
            time.sleep(interval)

    def wait_for_accepted(self, count: int, timeout: float = 5.0) -> dict[str, Any]:
        return self.wait_until(lambda s: s["accepted"] >= count, timeout)

    def close(self) -> None:
        if self._owns_client:
            self._http.close()

    def __enter__(self) -> SandboxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
