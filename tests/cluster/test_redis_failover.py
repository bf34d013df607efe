"""A Redis Cluster master SIGKILLed while workers claim and confirm: its replica takes over, dedup fails
open (counted) only while the failover runs, and every message confirmed before it is still known sent."""

from __future__ import annotations

import time
import uuid

import pytest
from django.conf import settings

from notifications.delivery.circuit_breaker import CircuitBreaker
from notifications.delivery.dedup import ClaimStatus, ConfirmResult, DedupStore
from notifications.delivery.redis_client import make_redis_client
from notifications.delivery.token_bucket import TokenBucket
from notifications.redis_keys import key_slot
from tests.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_a_master_killed_and_its_replica_promoted_keeps_dedup_working(cluster_processes, capsys):
    client = make_redis_client(settings.REDIS_URL)
    fail_open: list[int] = []
    store = DedupStore(
        client,
        f"test:failover:{uuid.uuid4().hex[:8]}:",
        breaker=CircuitBreaker("dedup-failover", failure_threshold=3, cool_down_seconds=1.0),
        on_fail_open=fail_open.append,
    )
    before = [f"before-{i}" for i in range(600)]  # spread over every master
    assert all(r.should_send and not r.fail_open for r in store.claim_many(before).values())
    assert set(store.confirm_many(before).values()) == {ConfirmResult.CONFIRMED}
    time.sleep(1.0)  # replicated to the replicas (asynchronous, well under a second)

    nodes = cluster_processes.redis_nodes()
    victim_slot = key_slot(store.key(before[0]))
    victim = next(
        n for n in nodes if n["role"] == "master" and client.get_node_from_key(store.key(before[0])).port == n["port"]
    )
    replica = next(n for n in nodes if n["master"] == victim["id"])
    cluster_processes.kill_redis_node(victim["port"])
    killed_at = time.monotonic()

    # Workers keep claiming and confirming new messages meanwhile: nothing raises, fail-opens are counted.
    batches, recovered_at, n = [], None, 0
    while time.monotonic() - killed_at < 30:
        keys = [f"during-{n}-{i}" for i in range(50)]
        n += 1
        opened = sum(fail_open)
        claims = store.claim_many(keys)
        store.confirm_many([k for k, r in claims.items() if r.should_send])
        batches.append((time.monotonic() - killed_at, sum(fail_open) - opened))
        if sum(fail_open) > 0 and sum(fail_open) == opened:
            recovered_at = recovered_at or time.monotonic()
            if time.monotonic() - recovered_at > 2.0:
                break
        else:
            recovered_at = None
        time.sleep(0.05)
    failing = [t for t, opened in batches if opened]
    with capsys.disabled():
        print(
            f"\n[redis failover] master :{victim['port']} (slot {victim_slot}) SIGKILLed; {sum(fail_open)} claims "
            f"failed open between {failing[0]:.1f} s and {failing[-1]:.1f} s after the kill, none after"
            if failing
            else "\n[redis failover] no claim failed open"
        )
    assert failing, "the failover was seen (and counted as fail-open sends)"
    assert recovered_at is not None, "claims stopped failing open once the replica took over"
    roles = {n["port"]: n["role"] for n in cluster_processes.redis_nodes()}
    assert roles[replica["port"]] == "master", "the replica was promoted"

    # Every message confirmed before the kill is still known sent: none is sent again.
    assert {r.status for r in store.claim_many(before).values()} == {ClaimStatus.ALREADY_SENT}
    assert not any(r.fail_open for r in store.claim_many([f"after-{i}" for i in range(100)]).values())
    booking = TokenBucket(client, store.prefix).book("sendgrid", rate=100.0, burst=5, n=3)
    assert booking.granted == 3 and booking.booked_at is not None

    # The killed node comes back as a replica of the promoted one.
    cluster_processes.start("redis")
    wait_for(
        lambda: {n["port"]: n["role"] for n in cluster_processes.redis_nodes()}.get(victim["port"]) == "slave",
        timeout=30,
        what="the old master rejoined as a replica",
    )
