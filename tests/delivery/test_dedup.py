"""DedupStore against a real Redis: claim/confirm/release semantics, leases, and fail-open."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from notifications.delivery.circuit_breaker import BreakerState, CircuitBreaker
from notifications.delivery.claim_owners import Owner, new_incarnation
from notifications.delivery.dedup import (
    SENT_MARKER,
    ClaimResult,
    ClaimStatus,
    ConfirmResult,
    DedupStore,
    ReleaseResult,
    required_lease_ms,
)
from notifications.delivery.redis_client import lua_source
from notifications.redis_keys import key_slot, sharded_counter_keys
from notifications.redis_multi import get_many

CLAIMED = ClaimResult(ClaimStatus.CLAIMED)


def store(client: redis.Redis, prefix: str, token: str, **kwargs: object) -> DedupStore:
    return DedupStore(client, prefix, token=token, **kwargs)  # type: ignore[arg-type]


def test_second_claim_is_in_flight(redis_client: redis.Redis, prefix: str) -> None:
    a = store(redis_client, prefix, "worker-a")
    b = store(redis_client, prefix, "worker-b")
    assert a.claim("msg-1") == CLAIMED
    assert b.claim("msg-1").status is ClaimStatus.IN_FLIGHT
    assert a.claim("msg-1").status is ClaimStatus.IN_FLIGHT  # also for the owner: it is being sent
    assert redis_client.get(a.key("msg-1")) == b"worker-a"
    assert 0 < redis_client.pttl(a.key("msg-1")) <= a.lease_ms


def test_confirm_then_claim_is_already_sent(redis_client: redis.Redis, prefix: str) -> None:
    a = store(redis_client, prefix, "worker-a", sent_ttl_ms=3_600_000)
    b = store(redis_client, prefix, "worker-b")
    assert a.claim("msg-1").should_send
    assert a.confirm("msg-1") is ConfirmResult.CONFIRMED
    assert redis_client.get(a.key("msg-1")) == SENT_MARKER.encode()
    assert 3_590_000 < redis_client.pttl(a.key("msg-1")) <= 3_600_000
    assert b.claim("msg-1").status is ClaimStatus.ALREADY_SENT
    assert not b.claim("msg-1").should_send
    assert b.confirm("msg-1") is ConfirmResult.ALREADY_SENT
    assert b.release("msg-1") is ReleaseResult.NOT_OWNER  # a 'sent' marker is never released
    assert redis_client.get(a.key("msg-1")) == SENT_MARKER.encode()


def test_release_only_by_owner(redis_client: redis.Redis, prefix: str) -> None:
    a = store(redis_client, prefix, "worker-a")
    b = store(redis_client, prefix, "worker-b")
    assert a.claim("msg-1").should_send
    assert b.release("msg-1") is ReleaseResult.NOT_OWNER
    assert b.confirm("msg-1") is ConfirmResult.LEASE_LOST  # b must not overwrite a's lease
    assert redis_client.get(a.key("msg-1")) == b"worker-a"
    assert a.release("msg-1") is ReleaseResult.RELEASED
    assert redis_client.exists(a.key("msg-1")) == 0
    assert a.release("msg-1") is ReleaseResult.NOT_OWNER
    assert b.claim("msg-1").should_send  # released: immediately claimable again


def test_lease_expiry_lets_another_worker_claim(redis_client: redis.Redis, prefix: str) -> None:
    a = store(redis_client, prefix, "worker-a", lease_ms=100)
    b = store(redis_client, prefix, "worker-b", lease_ms=5_000)
    assert a.claim("msg-1").should_send
    assert b.claim("msg-1").status is ClaimStatus.IN_FLIGHT
    time.sleep(0.15)
    assert b.claim("msg-1") == CLAIMED
    # a's late confirm/release must not touch b's lease.
    assert a.confirm("msg-1") is ConfirmResult.LEASE_LOST
    assert a.release("msg-1") is ReleaseResult.NOT_OWNER
    assert b.confirm("msg-1") is ConfirmResult.CONFIRMED


def test_confirm_after_expiry_with_no_new_owner_records_sent(redis_client: redis.Redis, prefix: str) -> None:
    a = store(redis_client, prefix, "worker-a", lease_ms=50)
    assert a.claim("msg-1").should_send
    time.sleep(0.1)
    assert a.confirm("msg-1") is ConfirmResult.RECORDED_AFTER_EXPIRY
    assert a.claim("msg-1").status is ClaimStatus.ALREADY_SENT


def test_batch_apis_use_one_pipeline_each(redis_client: redis.Redis, prefix: str) -> None:
    a = store(redis_client, prefix, "worker-a")
    b = store(redis_client, prefix, "worker-b")
    assert a.claim("k1").should_send
    assert a.claim("k2").should_send
    assert a.confirm("k2") is ConfirmResult.CONFIRMED
    results = b.claim_many(["k1", "k2", "k3", "k4", "k3"])
    assert list(results) == ["k1", "k2", "k3", "k4"]
    assert {k: r.status for k, r in results.items()} == {
        "k1": ClaimStatus.IN_FLIGHT,
        "k2": ClaimStatus.ALREADY_SENT,
        "k3": ClaimStatus.CLAIMED,
        "k4": ClaimStatus.CLAIMED,
    }
    assert not any(r.fail_open for r in results.values())
    assert b.confirm_many(["k3", "k1", "k2"]) == {
        "k3": ConfirmResult.CONFIRMED,
        "k1": ConfirmResult.LEASE_LOST,
        "k2": ConfirmResult.ALREADY_SENT,
    }
    assert b.release_many(["k4", "k1"]) == {"k4": ReleaseResult.RELEASED, "k1": ReleaseResult.NOT_OWNER}
    assert b.claim_many([]) == {}
    assert b.confirm_many([]) == {}


def test_a_tally_counts_each_recorded_send_once_in_the_slot_of_its_dedup_key(
    redis_client: redis.Redis, prefix: str
) -> None:
    a = store(redis_client, prefix, "worker-a", lease_ms=50)
    b = store(redis_client, prefix, "worker-b")
    keys = [f"campaign-msg-{i}" for i in range(40)]
    tallies = dict.fromkeys(keys, "campaign:7:sent")
    assert all(r.should_send for r in a.claim_many(keys).values())
    time.sleep(0.1)  # the first ten confirms come after the lease expired: recorded, and counted too
    assert set(a.confirm_many(keys[:10], tallies=tallies).values()) == {ConfirmResult.RECORDED_AFTER_EXPIRY}
    assert all(r.should_send for r in b.claim_many(keys[10:]).values())
    assert set(b.confirm_many(keys[10:], tallies=tallies).values()) == {ConfirmResult.CONFIRMED}
    assert set(b.confirm_many(keys, tallies=tallies).values()) == {ConfirmResult.ALREADY_SENT}  # redelivered
    for key in keys:
        assert key_slot(a.tally_key(key, "campaign:7:sent")) == key_slot(a.key(key))
    shards = get_many(redis_client, sharded_counter_keys(prefix, "campaign:7:sent"))
    assert sum(int(v) for v in shards if v) == 40
    assert sum(1 for v in shards if v) > 20  # spread over the dedup shards, not one hot key
    assert 0 < redis_client.pttl(a.tally_key(keys[0], "campaign:7:sent")) <= a.tally_ttl_ms


def test_scripts_are_loaded_when_missing_on_the_server(redis_client: redis.Redis, prefix: str) -> None:
    # A script text the server has never seen (unique comment -> unique SHA) stands in for a failover
    # to a server with an empty script cache; SCRIPT FLUSH is not used because Redis may be shared.
    a = store(redis_client, prefix, "worker-a")
    marker = f"\n-- {uuid.uuid4().hex}\n"
    a._confirm_script = redis_client.register_script(lua_source("dedup_confirm") + marker)
    a._release_script = redis_client.register_script(lua_source("dedup_release") + marker)
    assert redis_client.script_exists(a._confirm_script.sha, a._release_script.sha) == [False, False]
    assert a.claim_many(["x", "y", "z"]) == {"x": CLAIMED, "y": CLAIMED, "z": CLAIMED}
    assert a.confirm_many(["x", "y"]) == {"x": ConfirmResult.CONFIRMED, "y": ConfirmResult.CONFIRMED}
    assert a.release("z") is ReleaseResult.RELEASED
    assert redis_client.script_exists(a._confirm_script.sha, a._release_script.sha) == [True, True]


def test_per_key_server_error_fails_open_for_that_key_only(redis_client: redis.Redis, prefix: str) -> None:
    counted: list[int] = []
    a = store(redis_client, prefix, "worker-a", on_fail_open=counted.append)
    redis_client.rpush(a.key("bad"), "x")  # WRONGTYPE for SET ... GET
    results = a.claim_many(["good", "bad"])
    assert results["good"] == CLAIMED
    assert results["bad"] == ClaimResult(ClaimStatus.CLAIMED, fail_open=True)
    assert counted == [1]
    assert a.confirm("bad") is ConfirmResult.UNAVAILABLE


def test_fail_open_when_redis_is_unreachable(dead_redis: redis.Redis, prefix: str) -> None:
    counted: list[int] = []
    breaker = CircuitBreaker("redis", failure_threshold=2, cool_down_seconds=60.0)
    a = DedupStore(dead_redis, prefix, token="worker-a", breaker=breaker, on_fail_open=counted.append)
    fail_open = ClaimResult(ClaimStatus.CLAIMED, fail_open=True)
    started = time.monotonic()
    assert a.claim("msg-1") == fail_open
    assert a.claim("msg-1").should_send
    assert breaker.state is BreakerState.OPEN
    # While open, no socket is touched and the answer is still fail-open.
    assert a.claim_many(["m2", "m3", "m2"]) == {"m2": fail_open, "m3": fail_open}
    assert counted == [1, 1, 2]
    # confirm/release never raise into the delivery loop.
    assert a.confirm("msg-1") is ConfirmResult.UNAVAILABLE
    assert a.release_many(["m2", "m3"]) == {"m2": ReleaseResult.UNAVAILABLE, "m3": ReleaseResult.UNAVAILABLE}
    assert time.monotonic() - started < 1.0


def test_fail_open_counter_errors_do_not_break_claims(dead_redis: redis.Redis, prefix: str) -> None:
    def broken_counter(n: int) -> None:
        raise RuntimeError("metrics down")

    a = DedupStore(dead_redis, prefix, token="w", on_fail_open=broken_counter)
    assert a.claim("m").fail_open


def test_failed_redis_calls_close_the_breaker_again_after_recovery(redis_client: redis.Redis, prefix: str) -> None:
    clock = [0.0]
    breaker = CircuitBreaker("redis", failure_threshold=1, cool_down_seconds=1.0, clock=lambda: clock[0])
    breaker.record_failure()
    a = DedupStore(redis_client, prefix, token="worker-a", breaker=breaker)
    assert a.claim("m").fail_open  # open: Redis is not even tried
    clock[0] = 1.0
    assert a.claim("m") == CLAIMED  # half-open probe succeeds against the real Redis
    assert breaker.state is BreakerState.CLOSED


def test_lease_must_outlast_the_send(redis_client: redis.Redis, prefix: str) -> None:
    assert (
        required_lease_ms(10.0, 3, in_process_backoff_s=2.0, safety_factor=1.5) == 51_000
    )  # (3 x 10 s + 2 x 2 s) x 1.5
    with pytest.raises(ValueError, match="lease_ms"):
        DedupStore(redis_client, prefix, lease_ms=20_000, provider_timeout_s=10.0, in_process_attempts=2)
    DedupStore(redis_client, prefix, lease_ms=20_001, provider_timeout_s=10.0, in_process_attempts=2)
    with pytest.raises(ValueError):
        DedupStore(redis_client, prefix, token=SENT_MARKER)
    with pytest.raises(ValueError):
        DedupStore(redis_client, prefix).claim("")


def owner(instance: str, started_ms: int) -> Owner:
    """An owner whose incarnation sorts by `started_ms`, as `new_incarnation()` does."""
    return Owner(instance, f"{started_ms:013d}-{uuid.uuid4().hex[:8]}")


def test_a_claim_passes_at_once_to_the_next_claimer_when_its_owner_stops_refreshing_its_liveness(
    redis_client: redis.Redis, prefix: str
) -> None:
    a = DedupStore(redis_client, prefix, owner=owner("worker-sms.a", 1))
    b = DedupStore(redis_client, prefix, owner=owner("worker-sms.b", 2))
    assert a.refresh_liveness(60_000) is True and b.refresh_liveness(60_000) is True
    assert a.claim("msg-1") == CLAIMED
    assert b.claim("msg-1").status is ClaimStatus.IN_FLIGHT, "a is alive: its claim stays"
    assert redis_client.get(a.key("msg-1")) == a.token.encode() == b"worker-sms.a|" + a.owner.incarnation.encode()
    redis_client.delete(a.liveness_key("msg-1", "worker-sms.a"))  # a died: its key expired
    assert b.claim("msg-1") == ClaimResult(ClaimStatus.CLAIMED, taken_over=True)
    assert redis_client.get(a.key("msg-1")) == b.token.encode()
    assert 0 < redis_client.pttl(a.key("msg-1")) <= b.lease_ms
    # a comes back (a stalled process): its claim is gone, and it must not send.
    assert a.reclaim_many(["msg-1"]) == {"msg-1": ClaimStatus.IN_FLIGHT}
    assert a.confirm("msg-1") is ConfirmResult.LEASE_LOST
    assert a.release("msg-1") is ReleaseResult.NOT_OWNER
    assert b.reclaim_many(["msg-1"]) == {"msg-1": ClaimStatus.CLAIMED}
    assert b.confirm("msg-1") is ConfirmResult.CONFIRMED
    assert a.reclaim_many(["msg-1"]) == {"msg-1": ClaimStatus.ALREADY_SENT}


def test_liveness_keys_expire_by_themselves(redis_client: redis.Redis, prefix: str) -> None:
    a = DedupStore(redis_client, prefix, owner=owner("worker-sms.a", 1))
    b = DedupStore(redis_client, prefix, owner=owner("worker-sms.b", 2))
    assert a.refresh_liveness(150) is True
    assert a.claim("msg-1") == CLAIMED
    assert b.claim("msg-1").status is ClaimStatus.IN_FLIGHT
    time.sleep(0.25)
    assert b.claim("msg-1").taken_over


def test_a_restarted_worker_takes_over_its_predecessors_claims_at_once(redis_client: redis.Redis, prefix: str) -> None:
    before = DedupStore(redis_client, prefix, owner=owner("worker-email.0", 1_000))
    after = DedupStore(redis_client, prefix, owner=owner("worker-email.0", 2_000))
    assert before.refresh_liveness(60_000) is True  # its keys have not expired yet: it was killed a moment ago
    assert set(before.claim_many(["k1", "k2"]).values()) == {CLAIMED}
    assert before.confirm("k2") is ConfirmResult.CONFIRMED
    results = after.claim_many(["k1", "k2", "k3"])
    assert results == {
        "k1": ClaimResult(ClaimStatus.CLAIMED, taken_over=True),
        "k2": ClaimResult(ClaimStatus.ALREADY_SENT),
        "k3": CLAIMED,
    }
    # The successor's keys win over the predecessor's (a stopped process that resumes is superseded).
    assert after.refresh_liveness(60_000) is True
    assert before.refresh_liveness(60_000) is False
    assert redis_client.get(after.liveness_key("k3", "worker-email.0")) == after.owner.incarnation.encode()
    assert before.claim("k3").status is ClaimStatus.IN_FLIGHT, "an earlier incarnation never takes a later one's claims"


def test_claims_of_a_store_without_an_owner_are_never_taken_over(redis_client: redis.Redis, prefix: str) -> None:
    legacy = store(redis_client, prefix, "host:1:abc")
    b = DedupStore(redis_client, prefix, owner=owner("worker-sms.b", 2))
    assert legacy.claim("msg-1") == CLAIMED
    assert b.claim("msg-1").status is ClaimStatus.IN_FLIGHT
    with pytest.raises(ValueError):
        legacy.refresh_liveness(1000)
    with pytest.raises(ValueError):
        DedupStore(redis_client, prefix, token="t", owner=owner("worker-sms.b", 2))
    for bad in ("a|b", "", "{tag}"):
        with pytest.raises(ValueError):
            Owner(bad, "1")
    assert Owner.parse("worker-sms.a|0001-ff") == Owner("worker-sms.a", "0001-ff")
    assert Owner.parse("host:1:abc") is None and Owner.parse("|x") is None and Owner.parse(SENT_MARKER) is None
    assert len({new_incarnation() for _ in range(100)}) == 100


def test_a_claim_lost_with_a_redis_restart_is_claimed_again_before_the_send(
    redis_client: redis.Redis, prefix: str
) -> None:
    a = DedupStore(redis_client, prefix, owner=owner("worker-sms.a", 1))
    assert a.claim("msg-1") == CLAIMED
    redis_client.delete(a.key("msg-1"))  # Redis restarted without its data
    assert a.reclaim_many(["msg-1"]) == {"msg-1": ClaimStatus.CLAIMED}
    assert redis_client.get(a.key("msg-1")) == a.token.encode()


def test_reading_claims_back_tells_our_own_apart_and_never_claims_anything(
    redis_client: redis.Redis, prefix: str
) -> None:
    a = DedupStore(redis_client, prefix, owner=owner("worker-sms.a", 1))
    b = DedupStore(redis_client, prefix, owner=owner("worker-sms.b", 1))
    assert a.claim("ours") == CLAIMED and b.claim("theirs") == CLAIMED
    assert a.claim("sent") == CLAIMED and a.confirm("sent") == ConfirmResult.CONFIRMED
    assert a.owned_many(["ours", "theirs", "sent", "gone"]) == {
        "ours": True,
        "theirs": False,
        "sent": False,
        "gone": False,
    }
    assert redis_client.get(a.key("gone")) is None, "a released claim is not made again by reading it"


def test_a_retried_claim_counts_what_the_failed_attempt_claimed_as_ours(redis_client: redis.Redis, prefix: str) -> None:
    a = DedupStore(redis_client, prefix, owner=owner("worker-sms.a", 1))
    assert a.claim("msg-1") == CLAIMED  # the answer of this call was lost (Redis went away mid-call)
    assert a.try_claim_many(["msg-1", "msg-2"], mine={"msg-1", "msg-2"}) == {"msg-1": CLAIMED, "msg-2": CLAIMED}
    assert a.try_claim_many(["msg-1"]) == {"msg-1": ClaimResult(ClaimStatus.IN_FLIGHT)}, "else: in flight, as always"


def test_without_redis_the_try_forms_answer_none_and_count_nothing(dead_redis: redis.Redis, prefix: str) -> None:
    counted: list[int] = []
    a = DedupStore(dead_redis, prefix, owner=owner("worker-sms.a", 1), on_fail_open=counted.append)
    assert a.try_claim_many(["m1", "m2"]) is None
    assert a.reclaim_many(["m1"]) is None
    assert a.owned_many(["m1"]) is None
    assert a.try_confirm_many(["m1"]) is None
    assert a.refresh_liveness(3000) is None
    assert counted == []
    assert a.claim_many(["m1"]) == {"m1": ClaimResult(ClaimStatus.CLAIMED, fail_open=True)} and counted == [1]
