"""Fail-fast Redis client factory and Lua script loading shared by the delivery modules."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import redis
from redis.commands.core import Script

from notifications.redis_connect import redis_from_url

__all__ = ["LUA_DIR", "lua_source", "make_redis_client", "register_lua"]

LUA_DIR = Path(__file__).resolve().parent / "lua"


def make_redis_client(
    url: str,
    *,
    socket_timeout: float = 0.25,
    socket_connect_timeout: float = 0.25,
    retries: int = 1,
    health_check_interval: int = 15,
    max_connections: int | None = None,
) -> redis.Redis:
    """Build a client suited to the delivery hot path (one server or a ``redis+cluster://`` cluster).

    redis-py 8's default is ``Retry(ExponentialWithJitterBackoff, 10)`` with 5 s socket timeouts: a
    refused connection takes ~4 s to surface, an unresponsive host far longer. The dedup store fails
    open and the circuit breakers trip on errors, so they need errors *fast*: short timeouts and at
    most one immediate retry (which covers a connection dropped by an idle timeout or failover).
    """
    return redis_from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        retries=retries,
        health_check_interval=health_check_interval,
        max_connections=max_connections,
    )


@cache
def lua_source(name: str) -> str:
    """Return the text of ``lua/<name>.lua`` shipped next to this module."""
    return (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")


def register_lua(client: redis.Redis, name: str) -> Script:
    """``client.register_script`` for a bundled script (EVALSHA, reloading on NOSCRIPT)."""
    return client.register_script(lua_source(name))
