"""A long-running role's own HTTP server: `/metrics`, `/healthz` (its loop turns) and `/readyz` (and
the dependencies it needs answer). Why, in `docs/architecture.md`, "Health of the long-running roles"."""

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from django.conf import settings
from django.db import connections
from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

from notifications.health import run_checks

#: What a consumer role needs (the relay needs no Redis).
ALL_DEPENDENCIES = ("postgres", "redis", "kafka")


class LoopHeartbeat:
    """When the role's loop last began a turn (monotonic seconds); the loop calls `beat()` each turn."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last: float | None = None

    def beat(self) -> None:
        self.last = self.clock()

    def status(self, stall_seconds: float) -> dict[str, Any]:
        """{"ok": True, "last_turn_seconds_ago"} while the loop turned within `stall_seconds`."""
        if self.last is None:
            return {"ok": False, "error": "the loop has not turned yet"}
        age = round(self.clock() - self.last, 1)
        if age > stall_seconds:
            return {"ok": False, "error": f"stalled: last turn {age} s ago (limit {stall_seconds:g} s)"}
        return {"ok": True, "last_turn_seconds_ago": age}


#: The process's loop (a process runs one role).
HEARTBEAT = LoopHeartbeat()


def probe_app(
    dependencies: Sequence[str],
    *,
    heartbeat: LoopHeartbeat = HEARTBEAT,
    registry: CollectorRegistry = REGISTRY,
    stall_seconds: float | None = None,
) -> Callable:
    """The WSGI app: /healthz and /readyz answer 200 or 503 with JSON naming what is down; every
    other path is Prometheus' /metrics."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            return metrics(environ, start_response)
        limit = settings.PROCESS_LOOP_STALL_SECONDS if stall_seconds is None else stall_seconds
        components = {"loop": heartbeat.status(limit)}
        if path == "/readyz":
            try:
                components |= run_checks(dependencies)
            finally:
                connections.close_all()  # this request thread's own database connection
        ok = all(c["ok"] for c in components.values())
        body = {
            "status": ("ok" if path == "/healthz" else "ready") if ok else "unavailable",
            "down": sorted(name for name, c in components.items() if not c["ok"]),
            "components": components,
        }
        start_response(
            "200 OK" if ok else "503 Service Unavailable",
            [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
        )
        return [orjson.dumps(body)]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes and probes every few seconds
        pass


def serve_probes(port: int, addr: str, dependencies: Sequence[str], **options: Any) -> WSGIServer:
    """Serve `probe_app` on addr:port from a daemon thread; returns the server (its port, shutdown)."""
    server = make_server(addr, port, probe_app(dependencies, **options), _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
