"""A worker's Redis hold (messages wait while Redis is briefly away) and its liveness keys' evidence."""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from notifications.delivery.claim_owners import Owner
from notifications.delivery.liveness import SAFETY, Liveness
from notifications.delivery.redis_hold import PROBE_MAX_WAIT, RedisHold


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


OWNER = Owner("worker-sms.0", "0000000000001-aa")


class FakeStore:
    """What Liveness uses of a DedupStore: its owner and the refresh's answer."""

    def __init__(self, owner: Owner | None = OWNER) -> None:
        self.owner = owner
        self.token = owner.token if owner else "t"
        self.answer: bool | None = True

    def refresh_liveness(self, ttl_ms: int) -> bool | None:
        return self.answer


def test_liveness_vouches_only_for_claims_made_since_the_keys_have_been_alive_without_a_gap():
    clock, store = Clock(), FakeStore()
    liveness = Liveness(store, ttl=3.0, interval=1.0, clock=clock)  # type: ignore[arg-type]
    assert not liveness.vouches_for(clock.now), "before the first refresh nothing is proven"
    assert liveness.refresh() is True
    claimed = clock.now
    assert liveness.vouches_for(claimed)
    assert not liveness.vouches_for(claimed - 1), "made before the keys existed: may have been taken over"
    clock.now += 1.0
    assert liveness.refresh() is True
    clock.now += 2.0
    assert liveness.vouches_for(claimed), "refreshed in time: still alive"
    clock.now += 3.0 - SAFETY  # the process stalled past the keys' TTL
    assert not liveness.vouches_for(claimed)
    assert liveness.refresh() is True  # back: the keys are alive again, but there was a gap
    assert not liveness.vouches_for(claimed), "a claim from before the gap must be checked in Redis"
    assert liveness.vouches_for(clock.now)
    store.answer = None  # Redis away: the evidence runs out at the TTL
    clock.now += 1.0
    assert liveness.refresh() is None and liveness.vouches_for(clock.now - 0.5)
    clock.now += 2.0
    assert not liveness.vouches_for(clock.now - 2.5)
    store.answer = False  # a newer process of this instance started
    assert liveness.refresh() is False
    assert liveness.superseded and not liveness.vouches_for(clock.now)
    with pytest.raises(ValueError):
        Liveness(FakeStore(), ttl=1.0, interval=1.0)  # type: ignore[arg-type]


def test_a_refresh_that_starts_a_new_span_after_a_gap_calls_after_gap_once():
    clock, store = Clock(), FakeStore()
    liveness = Liveness(store, ttl=3.0, interval=0.01, clock=clock)  # type: ignore[arg-type]
    liveness.refresh()
    gaps: list[float] = []
    refreshed = 0

    async def after_gap() -> None:
        gaps.append(clock.now)

    async def scenario() -> None:
        nonlocal refreshed
        task = asyncio.ensure_future(liveness.run(ThreadPoolExecutor(1), after_gap=after_gap))
        await asyncio.sleep(0.1)  # refreshed in time: no gap
        refreshed = len(gaps)
        clock.now += 10.0  # the process stalled past the keys' TTL
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(scenario())
    assert refreshed == 0 and gaps == [clock.now]


def test_without_an_owner_nobody_takes_claims_over_so_every_claim_is_safe():
    liveness = Liveness(FakeStore(owner=None), ttl=1.0, interval=1.0)  # type: ignore[arg-type]
    assert not liveness.enabled and liveness.vouches_for(None) and liveness.refresh() is True


def hold(bound: float, probe, on_back=lambda: None) -> RedisHold:
    return RedisHold(
        channel="test",
        bound=bound,
        probe=probe,
        on_back=on_back,
        executor=ThreadPoolExecutor(1),
        rng=random.Random(3),
    )


def test_waiters_go_on_in_order_as_soon_as_the_probe_finds_redis_back():
    events: list[str] = []
    up_at = time.monotonic() + 1.5

    def probe() -> None:
        if time.monotonic() < up_at:
            raise ConnectionError("refused")

    async def scenario() -> None:
        h = hold(30.0, probe, on_back=lambda: events.append("breakers reset"))
        assert h.failed("dedup claim") and h.holding

        async def waiter(name: str) -> None:
            assert await h.wait()
            events.append(name)

        started = time.monotonic()
        await asyncio.gather(waiter("first"), waiter("second"), waiter("third"))
        late = time.monotonic() - up_at
        assert 0 <= late <= PROBE_MAX_WAIT + 0.3, f"seen back {late:.2f} s after Redis answered"
        assert time.monotonic() - started < 30
        assert not h.holding and await h.wait(), "no hold on: nothing to wait for"
        h.close()

    asyncio.run(scenario())
    assert events == ["breakers reset", "first", "second", "third"]


def test_beyond_the_bound_waiters_are_told_to_fall_back_and_later_failures_do_not_wait():
    def probe() -> None:
        raise ConnectionError("refused")

    async def scenario() -> None:
        h = hold(0.5, probe)
        assert h.failed("token bucket")
        started = time.monotonic()
        assert await h.wait() is False
        assert 0.4 < time.monotonic() - started < 2.0
        assert not h.holding and h.expired
        assert h.failed("token bucket") is False, "the outage outlasted the bound: as without holds"
        h.close()

    asyncio.run(scenario())


def test_a_bound_of_zero_turns_holding_off():
    async def scenario() -> None:
        h = hold(0.0, lambda: None)
        assert h.failed("dedup claim") is False and not h.holding

    asyncio.run(scenario())
