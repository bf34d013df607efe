"""EndpointBackoff against a real Redis: pauses shared by workers, failure runs, fail open."""

from __future__ import annotations

import uuid

import pytest
import redis

from notifications.delivery.endpoint_backoff import EndpointBackoff, EndpointBackoffConfig
from notifications.redis_keys import key_slot


@pytest.fixture
def prefix() -> str:
    """A unique key prefix; nothing to clean up (every key this module writes expires by itself),
    so no SCAN of a shared Redis after each test."""
    return f"test:endpoints:{uuid.uuid4().hex}:"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_pause_set_by_one_worker_holds_that_endpoint_for_every_worker_and_no_other(
    redis_client: redis.Redis, prefix: str
) -> None:
    one, other = EndpointBackoff(redis_client, prefix), EndpointBackoff(redis_client, prefix)
    one.pause("endpoint:1", 30)
    assert 29 < other.wait("endpoint:1") <= 30
    assert other.wait("endpoint:2") == 0
    assert other.wait("origin:https://hooks.example.com:443") == 0


def test_the_longer_pause_wins(redis_client: redis.Redis, prefix: str) -> None:
    backoff = EndpointBackoff(redis_client, prefix)
    assert backoff.pause("endpoint:1", 30) == 30
    assert 29 < backoff.pause("endpoint:1", 2) <= 30, "a short Retry-After does not cut a longer pause"
    fresh = EndpointBackoff(redis_client, prefix)
    assert fresh.wait("endpoint:1") > 29


def test_a_pause_is_capped(redis_client: redis.Redis, prefix: str) -> None:
    backoff = EndpointBackoff(redis_client, prefix, config=EndpointBackoffConfig(max_pause=60))
    assert backoff.pause("endpoint:1", 86_400) == 60
    assert 59 < EndpointBackoff(redis_client, prefix).wait("endpoint:1") <= 60


def test_a_run_of_failures_pauses_the_endpoint_and_each_further_pause_doubles(
    redis_client: redis.Redis, prefix: str
) -> None:
    config = EndpointBackoffConfig(failure_threshold=3, failure_pause=5, max_pause=600)
    backoff = EndpointBackoff(redis_client, prefix, config=config)
    assert [backoff.failed("endpoint:1") for _ in range(2)] == [0, 0]
    assert EndpointBackoff(redis_client, prefix).wait("endpoint:1") == 0
    assert backoff.failed("endpoint:1") == 5
    assert 4 < EndpointBackoff(redis_client, prefix).wait("endpoint:1") <= 5
    assert backoff.failed("endpoint:1") == 0, "a send started before the pause: no longer pause for it"
    redis_client.delete(backoff.keys("endpoint:1")[0])  # the pause ran out; the next send fails again
    assert backoff.failed("endpoint:1") == 10
    redis_client.delete(backoff.keys("endpoint:1")[0])
    assert backoff.failed("endpoint:1") == 20


def test_a_success_ends_the_failure_run_whichever_worker_counted_it(redis_client: redis.Redis, prefix: str) -> None:
    config = EndpointBackoffConfig(failure_threshold=3, failure_pause=5)
    counting, succeeding = (EndpointBackoff(redis_client, prefix, config=config) for _ in range(2))
    counting.failed("endpoint:1")
    counting.failed("endpoint:1")
    succeeding.succeeded("endpoint:1")
    assert counting.failed("endpoint:1") == 0, "the run started again after the success"


def test_a_not_paused_answer_is_trusted_only_briefly(redis_client: redis.Redis, prefix: str) -> None:
    clock = FakeClock()
    reader = EndpointBackoff(redis_client, prefix, clock=clock, config=EndpointBackoffConfig(recheck=0.5))
    assert reader.wait("endpoint:1") == 0
    EndpointBackoff(redis_client, prefix).pause("endpoint:1", 30)
    assert reader.wait("endpoint:1") == 0  # within the recheck interval: no Redis call
    clock.now += 0.6
    assert reader.wait("endpoint:1") > 29


def test_an_endpoints_keys_share_one_cluster_slot(redis_client: redis.Redis, prefix: str) -> None:
    pause, fails = EndpointBackoff(redis_client, prefix).keys("origin:https://{odd}.example.com:443")
    assert pause.startswith(prefix) and key_slot(pause) == key_slot(fails)


def test_without_redis_a_pause_holds_in_this_process(dead_redis: redis.Redis, prefix: str) -> None:
    backoff = EndpointBackoff(dead_redis, prefix)
    assert backoff.wait("endpoint:1") == 0, "fail open: an unreadable pause does not stop sending"
    assert backoff.pause("endpoint:1", 30) == 30
    assert 29 < backoff.wait("endpoint:1") <= 30
    assert backoff.failed("endpoint:1") == 0
    backoff.succeeded("endpoint:1")


def test_while_redis_is_away_it_is_not_asked_for_every_message(dead_redis: redis.Redis, prefix: str) -> None:
    """These calls block the worker's event loop: a few timeouts open the breaker, then none."""
    backoff = EndpointBackoff(dead_redis, prefix)
    calls = []
    original = dead_redis.pttl
    dead_redis.pttl = lambda *args: calls.append(args) or original(*args)  # count, still the real call
    for n in range(200):
        assert backoff.wait(f"origin:https://h{n}.example.com:443") == 0
    assert len(calls) <= 3 and backoff.breaker.state == "open"
