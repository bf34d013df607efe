"""The campaign throttle: at most N sends per second for one campaign, across every worker.

Two token buckets use a campaign's throttle, both global (Redis ``TIME`` is the only clock):

* ``campaign:{id}`` — taken by the channel worker right before a send of a message whose
  ``meta.throttle`` is set (:func:`campaign_throttle_take`); this is the exact limit.
* ``campaign-pace:campaign:{id}`` — taken by the batch expander before it releases per-recipient
  messages to ``notif.<channel>`` (:mod:`campaigns.expansion.expander`), so the topic never holds more
  than a moment's worth of a throttled campaign (pause and cancel take effect at once, and
  transactional messages are not queued behind it).

The burst is small (``CAMPAIGN_THROTTLE_BURST_SECONDS`` x rate, at least 1): the largest count
in any 1 s window is at most rate + burst, and a marketer's "100/s" should mean about that.

RedisError policy: fail closed. ``TokenBucket`` raises ``RateLimiterUnavailable`` (no local
fallback), exactly like the provider bucket, and the worker already parks such a message in a
retry tier; a campaign is never sent unthrottled because Redis is down.
"""

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
