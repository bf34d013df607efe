"""Every Lua script, MULTI and many-key read declares keys of one Redis Cluster slot (or splits by slot).

Two halves: a scan of the code base finds every call site that sends several keys to Redis at once
and fails on one nobody has looked at (``AUDITED`` says which keys each one sends); the key builders
those sites use are then checked to put those keys in one slot. The same paths run against a real
Redis Cluster in ``tests/cluster/``.
"""

from __future__ import annotations

import ast
import datetime as dt
import random
import string
from collections import Counter

import pytest
import redis

from campaigns import halt, progress
from notifications.delivery.dedup import DedupStore
from notifications.redis_keys import (
    DEDUP_SHARDS,
    dedup_shard_tag,
    dedup_shard_tags,
    hash_tag,
    key_slot,
    sharded_counter_key,
    sharded_counter_keys,
)
from preferences.frequency import CapRequest, _applicable, _key, window_bounds
from tests.redis_call_sites import AUDITED, NOT_REDIS, multi_key_call_sites, sends_several_keys


def test_every_multi_key_call_site_is_audited():
    found = multi_key_call_sites() - NOT_REDIS.keys()
    assert found - AUDITED.keys() == set(), "a new call sends several keys at once: check their slots, add to AUDITED"
    assert AUDITED.keys() - found == set(), "AUDITED names a call site that is gone"


def test_the_scan_finds_what_it_looks_for():
    tree = ast.parse(
        "client.mget(['a', 'b'])\np.pipeline(transaction=True)\np.pipeline(transaction=False)\n"
        "p.execute_command('EVALSHA', sha, 2, 'a', 'b')\np.execute_command('GET', 'a')\n"
    )
    calls = [node.value for node in tree.body]
    assert [sends_several_keys(c) for c in calls] == [True, True, False, True, False]


def _random_keys(n: int) -> list[str]:
    rng = random.Random(7)
    return ["".join(rng.choices(string.ascii_letters + string.digits + ":-", k=rng.randint(5, 40))) for _ in range(n)]


def test_a_dedup_key_its_counter_shard_and_its_owners_liveness_key_share_a_slot():
    store = DedupStore(redis.Redis(port=1), prefix="notif:")
    for idempotency_key in _random_keys(2000):
        assert key_slot(store.key(idempotency_key)) == key_slot(store.tally_key(idempotency_key, "campaign:9:sent"))
        assert key_slot(store.key(idempotency_key)) == key_slot(store.liveness_key(idempotency_key, "worker-sms.0"))
        assert store.key(idempotency_key).startswith(f"notif:dedup:{{{dedup_shard_tag(idempotency_key)}}}:")


def test_dedup_shards_spread_evenly_over_the_slot_range():
    tags = dedup_shard_tags()
    assert len(tags) == len(set(tags)) == DEDUP_SHARDS
    slots = [key_slot(hash_tag(t)) for t in tags]
    assert slots == sorted(slots)  # tag i in the i-th 1/DEDUP_SHARDS of the slots
    masters = Counter(slot * 3 // 16384 for slot in slots)  # the three equal ranges of a 3-master cluster
    assert max(masters.values()) - min(masters.values()) <= 1
    keys = Counter(dedup_shard_tag(k) for k in _random_keys(20_000))
    assert len(keys) == DEDUP_SHARDS and max(keys.values()) < 2 * 20_000 / DEDUP_SHARDS


def test_a_sharded_counter_has_one_key_per_shard():
    keys = sharded_counter_keys("notif:", "campaign:3:sent")
    assert len({key_slot(k) for k in keys}) == DEDUP_SHARDS
    assert keys[0] == sharded_counter_key("notif:", "campaign:3:sent", dedup_shard_tags()[0])


@pytest.mark.parametrize("campaign_id", [1, 42, 1234567])
def test_every_key_of_a_campaign_is_in_its_slot(settings, campaign_id):
    settings.REDIS_KEY_PREFIX = "notif:"
    keys = [
        progress.progress_key(campaign_id),
        progress.counted_key(campaign_id),
        progress.rate_key(campaign_id, "sent"),
        progress.rate_key(campaign_id, "queued"),
        progress.expanded_key(campaign_id, "launch-1"),
        progress.deferred_key(campaign_id, "launch-1"),
        progress.cursor_key(campaign_id, "launch-1", "email", "3.q1000@29412360"),
        halt.halt_key(campaign_id),
    ]
    assert len({key_slot(k) for k in keys}) == 1
    assert key_slot(progress.progress_key(campaign_id)) != key_slot(progress.progress_key(campaign_id + 1))


def test_the_caps_of_one_request_share_the_users_slot(settings):
    settings.REDIS_KEY_PREFIX = "notif:"
    now = dt.datetime(2026, 12, 3, 12, tzinfo=dt.UTC)
    request = CapRequest(
        user_id=77,
        category="marketing",
        channel="email",
        caps={"email": {"max": 2, "per": "day"}, "*": {"max": 5, "per": "week"}},
    )
    keys = [_key(request, scope, per, window_bounds(per, now)[0]) for scope, _max, per in _applicable(request)]
    assert len(keys) == 2 and len({key_slot(k) for k in keys}) == 1


def test_braces_in_a_prefix_or_counter_name_are_refused():
    with pytest.raises(ValueError, match="braces"):
        DedupStore(redis.Redis(port=1), prefix="notif:{x}:")
    with pytest.raises(ValueError, match="braces"):
        sharded_counter_key("notif:", "campaign:{3}:sent", "d0")
