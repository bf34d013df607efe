"""Per-API-key quotas: events per second and a burst, taken from a global token bucket in Redis.

All or nothing: a request whose events do not fit is refused whole (429 + Retry-After). RedisError
policy: each web process enforces the quota on its own (the token bucket's local fallback) until
Redis answers again — a runaway producer stays bounded, a well-behaved one is not refused.
"""

from __future__ import annotations

import math
from functools import lru_cache

from django.conf import settings
from prometheus_client import Counter

from notifications.delivery.token_bucket import TokenBucket
from notifications.ingest.api_keys import VerifiedKey
from notifications.redis_client import get_redis

THROTTLED = Counter("ingest_quota_refused_total", "Requests refused by their key's quota", ["service"])


class QuotaExceeded(Exception):
    def __init__(self, *, retry_after: int, detail: str) -> None:
        super().__init__(detail)
        self.retry_after = retry_after  # seconds
        self.detail = detail


@lru_cache(maxsize=1)
def _bucket(prefix: str) -> TokenBucket:
    return TokenBucket(get_redis(), prefix, fallback_share=1.0)


def quota_burst(key: VerifiedKey) -> int:
    """The key's burst: as set, else one second of its rate (at least 1)."""
    return key.quota_burst or max(1, math.ceil(key.quota_rate or 1))


def take_quota(key: VerifiedKey, events: int) -> None:
    """Take `events` from the key's bucket, or raise QuotaExceeded (nothing taken)."""
    if key.quota_rate is None or events < 1:
        return
    rate, burst = key.quota_rate, quota_burst(key)
    if events > burst:
        THROTTLED.labels(key.service).inc()
        raise QuotaExceeded(
            retry_after=math.ceil(burst / rate),
            detail=f"{events} events in one request; this key's quota allows at most {burst} at once.",
        )
    result = _bucket(settings.REDIS_KEY_PREFIX).take(f"ingest-quota:{key.prefix}", rate, burst, n=events)
    if result.granted < events:
        THROTTLED.labels(key.service).inc()
        raise QuotaExceeded(
            retry_after=max(1, math.ceil(result.wait_seconds)),
            detail=f"Over this key's quota of {rate:g} events/s (burst {burst}).",
        )
