"""Every audited multi-key call site (`tests/redis_call_sites.py`) run against the Redis Cluster: a script,
MULTI or MGET whose keys were not in one slot would raise here (CROSSSLOT), and the results must be right."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.conf import settings

from campaigns.halt import read_halts, set_halt
from campaigns.progress import read_counters, read_sent, record_expansion, record_outcomes, sent_tally
from notifications.delivery.circuit_breaker import CircuitBreaker
from notifications.delivery.claim_owners import Owner, new_incarnation
from notifications.delivery.dedup import ClaimStatus, ConfirmResult, DedupStore, ReleaseResult
from notifications.delivery.endpoint_backoff import EndpointBackoff, EndpointBackoffConfig
from notifications.delivery.token_bucket import TokenBucket
from notifications.redis_client import get_redis
from notifications.redis_connect import is_cluster
from preferences.cache import cache_key, preferences_get_many, publish_state
from preferences.frequency import CapRequest, frequency_cap_take_many
from preferences.models import PreferenceDocument
from preferences.state import PreferenceState
from tests.redis_call_sites import AUDITED

pytestmark = pytest.mark.cluster

#: Which test below runs each audited call site.
EXERCISED = {
    "notifications/delivery/dedup.py:DedupStore.__init__": "test_dedup",
    "notifications/delivery/dedup.py:DedupStore._run_script_many": "test_dedup",
    "notifications/delivery/token_bucket.py:TokenBucket.__init__": "test_token_buckets",
    "notifications/delivery/redis_client.py:register_lua": "test_dedup",
    "notifications/delivery/endpoint_backoff.py:EndpointBackoff.__init__": "test_endpoint_pauses",
    "notifications/redis_multi.py:get_many": "test_preferences",
    "notifications/redis_multi.py:evalsha_pipelined": "test_dedup",
    "preferences/scripts.py:lua_script": "test_preferences",
    "preferences/cache.py:_fenced_set_many": "test_preferences",
    "preferences/cache.py:preferences_get_many": "test_preferences",
    "preferences/frequency.py:frequency_cap_take_many": "test_frequency_caps",
    "campaigns/progress.py:<module>": "test_campaign_progress",
    "campaigns/progress.py:record_outcomes": "test_campaign_progress",
    "campaigns/progress.py:record_expansion": "test_campaign_progress",
    "campaigns/progress.py:read_sent": "test_campaign_progress",
    "campaigns/halt.py:read_halts": "test_campaign_halts",
    "notifications/redis_connect.py:PlatformRedisCluster.pipeline": "test_cluster_pipelines",
}


@pytest.fixture(autouse=True)
def prefix(settings):
    settings.REDIS_KEY_PREFIX = f"tcl{uuid.uuid4().hex[:8]}:"
    yield settings.REDIS_KEY_PREFIX
    client = get_redis()
    keys = list(client.scan_iter(match=f"{settings.REDIS_KEY_PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)


def test_every_audited_call_site_is_exercised_here():
    assert EXERCISED.keys() == AUDITED.keys()
    assert is_cluster(get_redis())


def test_dedup(prefix):
    breaker = CircuitBreaker("cluster-dedup", failure_threshold=1, cool_down_seconds=60)
    store = DedupStore(get_redis(), prefix, breaker=breaker, on_fail_open=lambda n: pytest.fail("failed open"))
    keys = [f"evt-{i}:{i}:email" for i in range(300)]
    assert all(r.status is ClaimStatus.CLAIMED for r in store.claim_many(keys).values())
    tallies = dict.fromkeys(keys[:200], sent_tally(7))
    assert set(store.confirm_many(keys[:200], tallies=tallies).values()) == {ConfirmResult.CONFIRMED}
    assert set(store.release_many(keys[200:]).values()) == {ReleaseResult.RELEASED}
    assert set(store.confirm_many(keys[:200], tallies=tallies).values()) == {ConfirmResult.ALREADY_SENT}
    assert read_sent(get_redis(), [7]) == {7: 200}
    assert breaker.state == "closed"
    # Owners: liveness keys in every shard (256 slots), and take-overs reading a claim with its
    # owner's liveness key of the same shard.
    dead = DedupStore(get_redis(), prefix, owner=Owner("worker-email.a", new_incarnation()), breaker=breaker)
    heir = DedupStore(get_redis(), prefix, owner=Owner("worker-email.b", new_incarnation()), breaker=breaker)
    assert dead.refresh_liveness(60_000) is True and heir.refresh_liveness(60_000) is True
    owned = [f"evt-o{i}:{i}:email" for i in range(300)]
    assert all(r.status is ClaimStatus.CLAIMED for r in dead.claim_many(owned).values())
    assert {r.status for r in heir.claim_many(owned).values()} == {ClaimStatus.IN_FLIGHT}
    get_redis().delete(*{dead.liveness_key(k, "worker-email.a") for k in owned})  # split by slot by the client
    assert all(r.taken_over for r in heir.claim_many(owned).values())
    assert set(dead.reclaim_many(owned).values()) == {ClaimStatus.IN_FLIGHT}


def test_token_buckets(prefix):
    bucket = TokenBucket(get_redis(), prefix)
    for name in ("sendgrid", "twilio", "fcm", "campaign:3"):
        assert bucket.take(name, rate=100.0, burst=5).granted == 1
        assert bucket.book(f"{name}-slots", rate=100.0, burst=5, n=3).granted == 3
        assert bucket.hold_for(name, 0.5) is not None


def test_endpoint_pauses(prefix):
    backoff = EndpointBackoff(get_redis(), prefix, config=EndpointBackoffConfig(failure_threshold=2))
    for n in range(30):  # endpoints all over the slot range
        scope = f"endpoint:{n}"
        assert backoff.pause(scope, 5) == 5
        assert backoff.failed(f"origin:https://h{n}.example.com:443") == 0
        assert backoff.failed(f"origin:https://h{n}.example.com:443") == 5
    assert EndpointBackoff(get_redis(), prefix).wait("endpoint:29") > 4


@pytest.mark.django_db
def test_preferences(prefix, django_user_model):
    users = [django_user_model.objects.create(username=f"u{i}") for i in range(60)]
    for user in users[:20]:
        PreferenceDocument.objects.create(user=user, version=3, document={"global_mute": True})
    ids = [u.pk for u in users]
    first = preferences_get_many(ids)  # misses: read the database, warm the cache (fenced sets)
    assert all(get_redis().exists(cache_key(i)) for i in ids)
    assert preferences_get_many(ids) == first  # hits: one MGET per slot
    assert first[ids[0]].version == 3 and first[ids[-1]].version == 0
    assert publish_state(PreferenceState(user_id=ids[0], version=4, document={}))
    assert preferences_get_many([ids[0]])[ids[0]].version == 4


def test_frequency_caps(prefix):
    now = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC)
    caps = {"email": {"max": 1, "per": "day"}, "*": {"max": 5, "per": "week"}}
    requests = [CapRequest(user_id=u, category="marketing", channel="email", caps=caps) for u in range(50)]
    assert all(d.allowed and not d.fail_open for d in frequency_cap_take_many(get_redis(), requests, now=now))
    refused = frequency_cap_take_many(get_redis(), requests, now=now, fail_open=False)
    assert {d.limited_by for d in refused} == {"email"}


def test_campaign_progress(prefix):
    client = get_redis()
    for campaign_id in (11, 12):
        record_expansion(
            client,
            campaign_id=campaign_id,
            launch_id="launch-1",
            channel="email",
            batch=0,
            cursor=500,
            queued=480,
            suppressed=20,
            extra=0,
            done=True,
            reasons={"frequency_cap": 20},
            deferred_batches=["0.q1000@1"],
            deferred_users=5,
        )
    meta = {"campaign_id": 11, "launch_id": "launch-1"}
    outcomes = [(f"m{i}", "dlq", meta) for i in range(10)] + [(f"m{i}", "sent", meta) for i in range(10, 20)]
    assert record_outcomes(outcomes, redis_client=client) == 10
    assert record_outcomes(outcomes, redis_client=client) == 0  # settled again: counted once
    counters = read_counters(client, [11, 12])
    assert counters[11]["queued"] == 480 and counters[11]["failed"] == 10 and counters[12]["suppressed"] == 20


def test_campaign_halts(prefix):
    client = get_redis()
    set_halt(client, 21, "cancelled")
    set_halt(client, 22, "paused")
    assert read_halts(client, [21, 22, 23, 24]) == {"21": "cancelled", "22": "paused"}
    assert prefix == settings.REDIS_KEY_PREFIX


def test_cluster_pipelines(prefix):
    """The platform's cluster client hands its routing policies to its pipelines, and a pipeline over
    keys of many slots runs each command on its key's node and answers in order."""
    client = get_redis()
    keys = [f"{prefix}pipe:{i}" for i in range(100)]
    pipe = client.pipeline(transaction=False)
    for i, key in enumerate(keys):
        pipe.set(key, i)
    assert all(pipe.execute())
    pipe = client.pipeline(transaction=False)
    assert pipe._policy_resolver is client._policy_resolver
    for key in keys:
        pipe.get(key)
    assert [int(v) for v in pipe.execute()] == list(range(100))
