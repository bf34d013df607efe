"""One pooled Redis client per process (the design's answer to "the dedup store melts at 10x")."""

from functools import lru_cache

import redis
from django.conf import settings

from notifications.redis_connect import redis_from_url


@lru_cache(maxsize=4)
def get_redis(url: str | None = None) -> redis.Redis:
    """The process's client for ``url`` (default ``REDIS_URL``: one server, or a cluster when it is a
    ``redis+cluster://`` URL)."""
    return redis_from_url(
        url or settings.REDIS_URL,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
        retries=1,
    )
