"""One pooled Redis client per process (the design's answer to "the dedup store melts at 10x")."""

from functools import lru_cache

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry


@lru_cache(maxsize=4)
def get_redis(url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(
        url or settings.REDIS_URL,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
        # redis-py 8 retries 10 times with backoff by default (≈4 s before an error surfaces);
        # callers have their own fail-open/closed policies and breakers, so fail fast instead.
        retry=Retry(NoBackoff(), 1),
    )
