"""Health probes: `/healthz` says the process is alive, `/readyz` that its dependencies answer."""

import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from confluent_kafka.admin import AdminClient
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET
from redis.cluster import RedisCluster

from notifications.redis_connect import is_cluster, redis_from_url

PROBE_TIMEOUT = 2.0


async def healthz(request: HttpRequest) -> JsonResponse:
    """Alive: answered on the event loop under ASGI (never queued behind sync views)."""
    return JsonResponse({"status": "ok"})


def check_postgres() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_redis() -> None:
    """PING the server, or on a cluster every master (each holds a share of the dedup keys)."""
    client = redis_from_url(
        settings.REDIS_URL,
        socket_timeout=PROBE_TIMEOUT,
        socket_connect_timeout=PROBE_TIMEOUT,
        retries=0,
        health_check_interval=0,
    )
    try:
        if is_cluster(client):
            client.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            client.ping()
    finally:
        client.close()


@lru_cache(maxsize=1)
def _kafka_admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(PROBE_TIMEOUT * 1000)})


def check_kafka() -> None:
    metadata = _kafka_admin(settings.KAFKA_BOOTSTRAP_SERVERS).list_topics(timeout=PROBE_TIMEOUT)
    if not metadata.brokers:
        raise ConnectionError("no broker in metadata")


def check_ingest() -> None:
    """The ingest is shedding load (`notifications.ingest.overload`): not ready for producers."""
    from notifications.ingest.views import overload

    reason = overload.reason()
    if reason is not None:
        raise RuntimeError(f"shedding load: {reason}")


CHECKS: dict[str, Callable[[], None]] = {
    "postgres": check_postgres,
    "redis": check_redis,
    "kafka": check_kafka,
    "ingest": check_ingest,
}


def run_checks(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """{name: {"ok": True, "latency_ms"} or {"ok": False, "error"}} for the checks `names` of CHECKS."""
    components: dict[str, dict[str, Any]] = {}
    for name in names:
        started = time.perf_counter()
        try:
            CHECKS[name]()
            components[name] = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
        except Exception as exc:  # any failure means "not ready"; the detail says which and why
            components[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return components


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    components = run_checks(CHECKS)
    ready = all(c["ok"] for c in components.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "components": components},
        status=200 if ready else 503,
    )
