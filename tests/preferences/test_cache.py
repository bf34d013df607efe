"""The preference cache: MGET + one query for misses, fenced writes, invalidation, Redis down."""

from __future__ import annotations

import orjson
import pytest

from notifications.redis_multi import get_many
from preferences import cache
from preferences.cache import cache_key, preferences_get, preferences_get_many, publish_state
from preferences.models import PreferenceDocument
from preferences.services import preferences_delete, preferences_update
from preferences.state import PreferenceState

from .factories import PreferenceDocumentFactory, UserFactory

pytestmark = pytest.mark.django_db

MUTE = {"global_mute": True}


def cached(redis_client, user_id):
    raw = redis_client.get(cache_key(user_id))
    return orjson.loads(raw) if raw is not None else None


def test_read_caches_then_update_publishes_the_new_version(redis_client, django_capture_on_commit_callbacks):
    user = UserFactory()
    assert preferences_get(user.pk) == PreferenceState(user_id=user.pk, version=0, document={})
    assert cached(redis_client, user.pk) == {"v": 0, "doc": {}}  # users without a document are cached too

    with django_capture_on_commit_callbacks(execute=True):
        preferences_update(user=user, document=MUTE, partial=False)
    assert cached(redis_client, user.pk) == {"v": 1, "doc": MUTE}
    assert preferences_get(user.pk).version == 1 and preferences_get(user.pk).global_mute

    with django_capture_on_commit_callbacks(execute=True):
        preferences_update(user=user, document={"global_mute": False}, partial=True)
    assert cached(redis_client, user.pk) == {"v": 2, "doc": {"global_mute": False}}
    assert redis_client.ttl(cache_key(user.pk)) > 3000


def test_nothing_reaches_the_cache_before_commit(redis_client, django_capture_on_commit_callbacks):
    user = UserFactory()
    preferences_get(user.pk)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        preferences_update(user=user, document=MUTE, partial=False)
    assert cached(redis_client, user.pk)["v"] == 0 and len(callbacks) == 1


def test_a_stale_reader_cannot_overwrite_a_newer_version(redis_client):
    user_id = 4242
    assert publish_state(PreferenceState(user_id=user_id, version=5, document=MUTE))
    # A reader that loaded version 4 before the commit of 5 tries to warm the cache afterwards:
    cache._fenced_set_many(redis_client, [PreferenceState(user_id=user_id, version=4, document={})])
    assert cached(redis_client, user_id) == {"v": 5, "doc": MUTE}
    cache._fenced_set_many(redis_client, [PreferenceState(user_id=user_id, version=6, document={})])
    assert cached(redis_client, user_id) == {"v": 6, "doc": {}}


def test_get_many_is_one_mget_and_one_query_for_the_misses(redis_client, django_assert_num_queries, monkeypatch):
    docs = [PreferenceDocumentFactory(document=MUTE, version=3) for _ in range(3)]
    plain = UserFactory()
    ids = [d.user_id for d in docs] + [plain.pk]
    preferences_get(ids[0])  # one of them is already cached

    reads = []
    monkeypatch.setattr(cache, "get_many", lambda client, keys: reads.append(keys) or get_many(client, keys))
    with django_assert_num_queries(1):
        states = preferences_get_many([*ids, ids[1]], redis_client=redis_client)
    assert reads == [[cache_key(i) for i in ids]]  # one MGET (+ the warming pipeline)
    assert set(states) == set(ids)
    assert all(states[d.user_id] == PreferenceState(d.user_id, 3, MUTE) for d in docs)
    assert states[plain.pk] == PreferenceState(plain.pk, 0, {})

    reads.clear()
    with django_assert_num_queries(0):  # everything is cached now
        assert preferences_get_many(ids, redis_client=redis_client) == states
    assert len(reads) == 1


def test_redis_down_reads_fall_back_to_the_database(dead_redis, django_assert_num_queries):
    doc = PreferenceDocumentFactory(document=MUTE, version=2)
    for _ in range(5):  # after 3 errors the breaker skips Redis entirely; answers stay correct
        with django_assert_num_queries(1):
            state = preferences_get(doc.user_id, redis_client=dead_redis)
        assert state == PreferenceState(doc.user_id, 2, MUTE)
    assert cache.BREAKER.state == "open"


def test_redis_down_writes_still_commit(dead_redis, monkeypatch, django_capture_on_commit_callbacks):
    user = UserFactory()
    monkeypatch.setattr(cache, "get_redis", lambda: dead_redis)
    with django_capture_on_commit_callbacks(execute=True):
        state = preferences_update(user=user, document=MUTE, partial=False)
    assert state.version == 1
    assert PreferenceDocument.objects.get(user=user).version == 1  # committed despite the failed cache update


def test_corrupt_cache_entry_is_a_miss(redis_client):
    doc = PreferenceDocumentFactory(document=MUTE, version=2)
    redis_client.set(cache_key(doc.user_id), b"not json")
    assert preferences_get(doc.user_id) == PreferenceState(doc.user_id, 2, MUTE)
    assert cached(redis_client, doc.user_id) == {"v": 2, "doc": MUTE}


def test_deleting_a_document_drops_the_cached_state(redis_client, django_capture_on_commit_callbacks):
    doc = PreferenceDocumentFactory(document=MUTE, version=7)
    preferences_get(doc.user_id)
    with django_capture_on_commit_callbacks(execute=True):
        assert preferences_delete(user_id=doc.user_id)
    assert cached(redis_client, doc.user_id) is None
    assert preferences_get(doc.user_id).version == 0
