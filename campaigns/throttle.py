"""The campaign throttle: at most N sends per second for one campaign, across every worker, from a global
token bucket (Redis ``TIME`` the only clock) that fails closed. See docs/architecture.md, "Campaigns"
(Throttle)."""

from __future__ import annotations

import math
import weakref

import redis
from django.conf import settings

from notifications.delivery.token_bucket import Priority, TakeResult, TokenBucket

__all__ = ["campaign_throttle_take", "throttle_bucket_name", "throttle_burst"]

_buckets: weakref.WeakKeyDictionary[redis.Redis, dict[str, TokenBucket]] = weakref.WeakKeyDictionary()


def throttle_bucket_name(campaign_id: int | str) -> str:
    return f"campaign:{campaign_id}"


def throttle_burst(rate: float) -> int:
    seconds = float(getattr(settings, "CAMPAIGN_THROTTLE_BURST_SECONDS", 0.1))
    return max(1, math.ceil(rate * seconds))


def token_bucket_for(client: redis.Redis) -> TokenBucket:
    """One TokenBucket (script registration, breaker) per Redis client and key prefix."""
    per_client = _buckets.setdefault(client, {})
    prefix = settings.REDIS_KEY_PREFIX
    bucket = per_client.get(prefix)
    if bucket is None:
        bucket = per_client[prefix] = TokenBucket(client, prefix)
    return bucket


def campaign_throttle_take(
    redis_client: redis.Redis, *, campaign_id: int | str, rate: float, n: int = 1
) -> tuple[int, float]:
    """Take ``n`` tokens from the campaign's bucket → ``(granted, wait_seconds)``: ``(n, 0.0)``, or
    ``(0, seconds until n tokens could be there)``. All or nothing, like the provider bucket's take.

    Raises ``RateLimiterUnavailable`` when Redis cannot be used (fail closed, see module docstring)."""
    if rate is None or rate <= 0:
        return n, 0.0
    burst = max(throttle_burst(rate), n)
    result: TakeResult = token_bucket_for(redis_client).take(
        throttle_bucket_name(campaign_id), float(rate), burst, n=n, priority=Priority.TRANSACTIONAL
    )
    return result.granted, result.wait_seconds
