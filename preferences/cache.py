"""Redis read-through cache of preference states, fenced by the document version: one MGET per batch,
one query for the misses, writes that only a newer version may overwrite. See docs/architecture.md,
"Preferences" (Cache)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import orjson
import redis
from django.conf import settings

from notifications.delivery.circuit_breaker import CircuitBreaker
from notifications.redis_client import get_redis
from notifications.redis_connect import REDIS_ERRORS
from notifications.redis_multi import evalsha_pipelined, get_many

from .metrics import CACHE_ERRORS, CACHE_LOOKUPS
from .scripts import lua_script
from .state import PreferenceState

__all__ = [
    "BREAKER",
    "cache_delete",
    "cache_key",
    "preferences_get",
    "preferences_get_many",
    "publish_state",
]

logger = logging.getLogger(__name__)

#: Skips Redis after repeated errors (reads then go straight to the database).
BREAKER = CircuitBreaker("preferences-cache", failure_threshold=3, cool_down_seconds=5.0)


def cache_ttl() -> int:
    return int(getattr(settings, "PREFERENCES_CACHE_TTL", 3600))


def cache_key(user_id: int) -> str:
    return f"{settings.REDIS_KEY_PREFIX}prefs:{user_id}"


def _client(redis_client: redis.Redis | None) -> redis.Redis:
    return redis_client if redis_client is not None else get_redis()


def _encode(state: PreferenceState) -> bytes:
    return orjson.dumps({"v": state.version, "doc": state.document})


def _decode(user_id: int, raw: bytes) -> PreferenceState | None:
    try:
        value = orjson.loads(raw)
        return PreferenceState(user_id=user_id, version=int(value["v"]), document=value["doc"] or {})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # treated as a miss and overwritten


def _load_from_db(user_ids: list[int]) -> dict[int, PreferenceState]:
    from .models import PreferenceDocument

    states = {user_id: PreferenceState(user_id=user_id) for user_id in user_ids}
    rows = PreferenceDocument.objects.filter(user_id__in=user_ids).values_list("user_id", "version", "document")
    for user_id, version, document in rows:
        states[user_id] = PreferenceState(user_id=user_id, version=version, document=document or {})
    return states


def _fenced_set_many(client: redis.Redis, states: Iterable[PreferenceState]) -> None:
    ttl = cache_ttl()
    calls = [([cache_key(state.user_id)], [state.version, _encode(state), ttl]) for state in states]
    evalsha_pipelined(client, lua_script("prefs_cache_set"), calls)


def preferences_get_many(
    user_ids: Iterable[int], *, redis_client: redis.Redis | None = None
) -> dict[int, PreferenceState]:
    """States for many users: one MGET, at most one database query (misses), one warming pipeline.

    Every requested id is in the result; a user without a document gets ``PreferenceState(v=0)``.
    """
    ids = list(dict.fromkeys(int(user_id) for user_id in user_ids))
    if not ids:
        return {}
    states: dict[int, PreferenceState] = {}
    misses = ids
    client = _client(redis_client)
    use_cache = BREAKER.allow_request()
    if use_cache:
        try:
            raw_values = get_many(client, [cache_key(user_id) for user_id in ids])
        except REDIS_ERRORS as exc:
            BREAKER.record_failure()
            CACHE_ERRORS.labels("read").inc()
            logger.warning("preference cache read failed, reading the database", extra={"error": str(exc)})
            use_cache = False
        else:
            BREAKER.record_success()
            misses = []
            for user_id, raw in zip(ids, raw_values, strict=True):
                state = _decode(user_id, raw) if raw is not None else None
                if state is None:
                    misses.append(user_id)
                else:
                    states[user_id] = state
            CACHE_LOOKUPS.labels("hit").inc(len(states))
    if misses:
        CACHE_LOOKUPS.labels("miss" if use_cache else "bypass").inc(len(misses))
        loaded = _load_from_db(misses)
        states.update(loaded)
        if use_cache:
            try:
                _fenced_set_many(client, loaded.values())
            except REDIS_ERRORS as exc:
                BREAKER.record_failure()
                CACHE_ERRORS.labels("warm").inc()
                logger.warning("preference cache warm failed", extra={"error": str(exc)})
    return states


def preferences_get(user_id: int, *, redis_client: redis.Redis | None = None) -> PreferenceState:
    """The state of one user (cached); see :func:`preferences_get_many`."""
    return preferences_get_many([user_id], redis_client=redis_client)[int(user_id)]


def _with_one_retry(op: str, user_id: int, action) -> bool:
    for attempt in (1, 2):
        try:
            action()
        except REDIS_ERRORS as exc:
            if attempt == 2:
                CACHE_ERRORS.labels(op).inc()
                logger.error(
                    "preference cache %s failed twice; the cache may serve the previous version until its TTL",
                    op,
                    extra={"user_id": user_id, "error": str(exc)},
                )
                return False
        else:
            return True
    return False  # pragma: no cover


def publish_state(state: PreferenceState, *, redis_client: redis.Redis | None = None) -> bool:
    """Replace the cached state by ``state`` unless the cache already holds a newer version.

    Called on commit of every write; never raises on Redis errors (retried once, then counted).
    """
    client = _client(redis_client)
    return _with_one_retry("publish", state.user_id, lambda: _fenced_set_many(client, [state]))


def cache_delete(user_id: int, *, redis_client: redis.Redis | None = None) -> bool:
    """Drop the cached state (used when a document row is deleted); retried once, never raises."""
    client = _client(redis_client)
    return _with_one_retry("delete", user_id, lambda: client.delete(cache_key(user_id)))
