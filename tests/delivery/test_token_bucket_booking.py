"""Booked send slots (GCRA schedule in Redis) and the dispenser that wakes sends at their slots."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import threading
import time
from collections import Counter

import pytest
import redis

from notifications.delivery.dispenser import TokenDispenser
from notifications.delivery.token_bucket import CONTRACT_RAMP_SECONDS, Booking, TokenBucket

from .conftest import redis_time, thread_client


def _absolute(booking: Booking) -> list[float]:
    assert booking.booked_at is not None
    return [booking.booked_at + offset for offset in booking.offsets]


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_slots_are_one_interval_apart_after_the_burst(redis_client: redis.Redis, prefix: str) -> None:
    bucket = TokenBucket(redis_client, prefix)
    booking = bucket.book("twilio", rate=100.0, burst=3, n=8, horizon=1.0)
    assert booking.granted == 8 and booking.wait_seconds == 0.0
    assert booking.offsets[:3] == (0.0, 0.0, 0.0)  # the burst: at once
    gaps = [b - a for a, b in zip(booking.offsets[2:], booking.offsets[3:], strict=False)]
    assert gaps == pytest.approx([0.01] * 5, abs=2e-6)
    # The next booking continues the schedule where this one stopped.
    more = bucket.book("twilio", rate=100.0, burst=3, n=1, horizon=1.0)
    assert _absolute(more)[0] == pytest.approx(_absolute(booking)[-1] + 0.01, abs=2e-6)


def test_margin_stretches_the_interval_after_a_ramp_from_half_the_rate(redis_client: redis.Redis, prefix: str) -> None:
    """A contract schedule starting from idle: slots two intervals apart at first, closing to one
    (stretched by the margin) over CONTRACT_RAMP_SECONDS, then evenly spaced."""
    bucket = TokenBucket(redis_client, prefix)
    booking = bucket.book("twilio", rate=100.0, burst=1, n=200, margin=0.05, horizon=1.0)
    offsets = booking.offsets
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert gaps[0] == pytest.approx(2 * 0.0105, abs=2e-6)
    assert all(later <= earlier + 1e-6 for earlier, later in itertools.pairwise(gaps))  # closing
    steady = [g for o, g in zip(offsets, gaps, strict=False) if o >= CONTRACT_RAMP_SECONDS]
    assert steady and steady == pytest.approx([0.0105] * len(steady), abs=2e-6)
    # The ramp costs about a quarter of its length in sends (ln 2 of the slots fit): 0.5 s at 100/s.
    in_ramp = sum(1 for o in offsets if o < CONTRACT_RAMP_SECONDS)
    assert in_ramp == pytest.approx(CONTRACT_RAMP_SECONDS * 100 / 1.05 * 0.693, abs=2)


def test_horizon_limits_the_booking_and_the_wait_says_when_more_fit(redis_client: redis.Redis, prefix: str) -> None:
    bucket = TokenBucket(redis_client, prefix)
    booking = bucket.book("twilio", rate=100.0, burst=1, n=50, horizon=0.1, min_n=5)
    assert booking.granted == 11  # slots at 0, 10, ..., 100 ms
    # The next 5 slots (110..150 ms) fit once 150 ms - horizon = 50 ms have passed.
    assert booking.wait_seconds == pytest.approx(0.05, abs=2e-3)
    refused = bucket.book("twilio", rate=100.0, burst=1, n=50, horizon=0.1, min_n=5)
    assert refused.granted == 0 and 0.04 < refused.wait_seconds <= 0.05


def test_min_n_never_exceeds_what_the_horizon_can_hold(redis_client: redis.Redis, prefix: str) -> None:
    bucket = TokenBucket(redis_client, prefix)
    # At 5/s only one slot fits in 100 ms: asking for at least 10 must still book it.
    booking = bucket.book("sms", rate=5.0, burst=1, n=20, horizon=0.1, min_n=10)
    assert booking.granted == 1
    assert booking.wait_seconds == pytest.approx(0.1, abs=2e-3)  # the next slot (200 ms) - horizon


def test_bulk_books_half_the_horizon_and_leaves_the_reserve_of_the_burst(
    redis_client: redis.Redis, prefix: str
) -> None:
    bucket = TokenBucket(redis_client, prefix)
    bulk = bucket.book("twilio", rate=100.0, burst=3, n=100, priority="bulk", reserve=1, horizon=0.2)
    # Bulk may book up to 100 ms ahead less the reserved 1 of the burst's 3: 0, 0 (leaving the
    # reserve), then 10, 20, ... 90 ms.
    offsets = bulk.offsets
    assert offsets[-1] <= 0.09 + 1e-6
    assert bulk.granted == 12
    # Transactional books right behind the campaign's slots, within the bulk horizon.
    urgent = bucket.book("twilio", rate=100.0, burst=3, n=1, horizon=0.2)
    assert urgent.granted == 1 and urgent.offsets[0] <= 0.1 + 1e-6
    # And bulk cannot book further until time passes.
    assert bucket.book("twilio", rate=100.0, burst=3, n=1, priority="bulk", reserve=1, horizon=0.2).granted == 0


def test_hold_moves_the_schedule_to_the_hold_end_without_a_burst(redis_client: redis.Redis, prefix: str) -> None:
    bucket = TokenBucket(redis_client, prefix)
    until = bucket.hold_for("sendgrid", 0.5, rate=100.0, burst=10)
    assert until is not None
    booking = bucket.book("sendgrid", rate=100.0, burst=10, n=3, horizon=1.0)
    slots = _absolute(booking)
    assert slots[0] == pytest.approx(until, abs=2e-6)
    assert [b - a for a, b in itertools.pairwise(slots)] == pytest.approx([0.01, 0.01], abs=2e-6)


def test_concurrent_bookings_never_exceed_the_rate_in_any_window(redis_client: redis.Redis, prefix: str) -> None:
    """Eight threads book as fast as they can for 1.5 s: every slot is distinct and the schedule
    holds at most R (+ the burst) in any 1 s window, on the Redis clock."""
    rate, burst, threads = 200.0, 4, 8
    slots: list[list[float]] = [[] for _ in range(threads)]
    gate = threading.Barrier(threads)

    def hammer(i: int) -> None:
        mine = TokenBucket(thread_client(redis_client), prefix)
        gate.wait()
        stop_at = redis_time(redis_client) + 1.5
        while redis_time(redis_client) < stop_at:
            slots[i].extend(_absolute(mine.book("fcm", rate, burst, n=5, horizon=0.1)))

    workers = [threading.Thread(target=hammer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    every = sorted(t for per in slots for t in per)
    # GCRA conformance: at most `burst` slots share an instant (a burst after idle time, which a thread
    # stalled on a busy machine may also leave mid-run), and any burst + 1 slots in a row span at
    # least one interval.
    assert max(Counter(every).values()) <= burst
    assert min(b - a for a, b in zip(every, every[burst:], strict=False)) >= 1 / rate - 2e-6
    assert _max_in_window(every, 1.0) <= rate + burst
    span = every[-1] - every[0]
    assert len(every) >= 0.95 * (rate * span + burst)  # and the schedule was really used


def test_dispensers_wake_sends_at_their_slots(redis_client: redis.Redis, prefix: str) -> None:
    """Two dispensers (two worker processes) with 150 sends each share a 200/s contract with a 5%
    margin: the sends start evenly, never more than 200 in a second, in few Redis calls."""
    rate = 200.0
    calls = [0]

    class CountingBucket(TokenBucket):
        def book(self, *args, **kwargs):  # counts the real Lua calls, does not replace them
            calls[0] += 1
            return super().book(*args, **kwargs)

    async def run() -> list[float]:
        loop = asyncio.get_running_loop()
        woke: list[float] = []

        async def send(dispenser: TokenDispenser) -> None:
            await dispenser.acquire("transactional")
            woke.append(loop.time())

        dispensers = [
            TokenDispenser(
                bucket=CountingBucket(redis_client, prefix),
                name="twilio",
                contract=lambda: (rate, 1, 0),
                window_margin=0.05,
                rng=random.Random(i),
            )
            for i in range(2)
        ]
        await asyncio.gather(*(send(d) for d in dispensers for _ in range(150)))
        return woke

    woke = sorted(asyncio.run(run()))
    assert len(woke) == 300
    assert _max_in_window(woke, 1.0) <= rate
    gaps = sorted(b - a for a, b in itertools.pairwise(woke))
    interval = 1.05 / rate
    assert gaps[len(gaps) // 2] == pytest.approx(interval, rel=0.2)  # evenly spaced, not in bursts
    elapsed = woke[-1] - woke[0]
    # No slot went unused: the ramp's half-rate start costs (1 - ln 2) of its length.
    ramp_cost = CONTRACT_RAMP_SECONDS * (1 - math.log(2))
    assert elapsed == pytest.approx(299 * interval + ramp_cost, rel=0.05)
    # Fewer calls than slots: bookings of several slots (at least 3 at 200/s); polling took one call
    # per slot and waiting process.
    assert calls[0] < 300


def test_dispenser_cancelled_waiter_gives_its_slot_to_nobody_early(redis_client: redis.Redis, prefix: str) -> None:
    async def run() -> tuple[bool, bool]:
        dispenser = TokenDispenser(
            bucket=TokenBucket(redis_client, prefix), name="apns", contract=lambda: (10.0, 1, 0), horizon=1.0
        )
        first = asyncio.ensure_future(dispenser.acquire())
        second = asyncio.ensure_future(dispenser.acquire())
        await asyncio.sleep(0.01)  # both booked: at once and at 100 ms
        second.cancel()
        third = asyncio.ensure_future(dispenser.acquire())
        await asyncio.sleep(0.05)
        early = third.done()  # the cancelled waiter's slot (100 ms) is not handed on
        await asyncio.wait_for(third, 1.0)
        return first.done(), early

    first_done, third_early = asyncio.run(run())
    assert first_done and not third_early


def test_a_send_woken_too_late_books_again(redis_client: redis.Redis, prefix: str) -> None:
    """A process that was not scheduled in time gives its slot up instead of sending it together with
    the next slots' sends; the forfeit is counted."""

    async def run() -> int:
        dispenser = TokenDispenser(
            bucket=TokenBucket(redis_client, prefix),
            name="twilio",
            contract=lambda: (50.0, 1, 0),
            horizon=1.0,
            max_lateness=0.01,
        )
        await dispenser.acquire()  # the first slot, at once
        pending = asyncio.ensure_future(dispenser.acquire())  # booked 20 ms ahead
        await asyncio.sleep(0)
        await asyncio.sleep(0.005)
        time.sleep(0.05)  # the event loop stalls past the slot (a CPU-starved process)
        await pending
        return dispenser.forfeited

    assert asyncio.run(run()) == 1


def test_a_send_on_time_keeps_its_slot(redis_client: redis.Redis, prefix: str) -> None:
    async def run() -> int:
        dispenser = TokenDispenser(
            bucket=TokenBucket(redis_client, prefix),
            name="twilio",
            contract=lambda: (50.0, 1, 0),
            horizon=1.0,
            max_lateness=0.2,  # generous: a loaded CI machine must not make this test flaky
        )
        await asyncio.gather(*(dispenser.acquire() for _ in range(5)))
        return dispenser.forfeited

    assert asyncio.run(run()) == 0


def test_sends_booked_before_a_providers_hold_wait_for_its_end(redis_client: redis.Redis, prefix: str) -> None:
    """A 429 with Retry-After: the worker stores the hold in Redis and tells its dispenser; sends
    whose slots were booked before it do not go out into the hold, they book again after it."""

    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(redis_client, prefix)
        dispenser = TokenDispenser(bucket=bucket, name="sendgrid", contract=lambda: (20.0, 1, 0), horizon=1.0)
        await dispenser.acquire()
        pending = asyncio.ensure_future(dispenser.acquire())  # booked for 50 ms from now
        await asyncio.sleep(0.01)
        held_at = loop.time()
        bucket.hold_for("sendgrid", 0.3, rate=20.0, burst=1)
        dispenser.hold(0.3)
        await pending
        return held_at, loop.time()

    held_at, sent_at = asyncio.run(run())
    assert sent_at - held_at >= 0.28  # not at its 50 ms slot, but after the hold


def test_slot_times_map_through_the_clock_offset_of_the_fastest_call() -> None:
    """A booking answered late (its process was descheduled) must not move its slots: the offset
    between the Redis clock and the event loop's comes from the call with the shortest round trip."""
    dispenser = TokenDispenser(bucket=None, name="p", contract=lambda: (1.0, 1, 0))  # type: ignore[arg-type]
    # Redis clock = loop clock + 1000 s. A fast call: asked at 10.000, answered at 10.0002.
    assert dispenser._local_time_of(1010.0001, 10.0, 10.0002) == pytest.approx(10.0001, abs=1e-9)
    # A slow call (30 ms, the answer read late): its midpoint would be 15 ms off; the offset of
    # the fast call places Redis's 1020.0001 at 20.0001.
    assert dispenser._local_time_of(1020.0001, 20.0, 20.03) == pytest.approx(20.0001, abs=1e-6)
    assert dispenser._local_time_of(None, 30.0, 30.01) == pytest.approx(30.005)  # fallback: midpoint


def test_a_contract_schedule_has_no_burst(redis_client: redis.Redis, prefix: str) -> None:
    """With a margin (a provider counting every 1 s window) the burst's extra requests would eat the
    margin meant for jitter: slots are evenly spaced from the first, and bulk still books."""
    bucket = TokenBucket(redis_client, prefix)
    booking = bucket.book("twilio", rate=100.0, burst=5, n=3, margin=0.02, horizon=1.0)
    assert booking.offsets[0] == 0.0  # one at once, then (in the ramp) about two intervals apart
    assert booking.offsets[1] == pytest.approx(0.0204, abs=2e-6)
    slow = bucket.book("sms", rate=1.0, burst=5, n=2, priority="bulk", reserve=1, margin=0.02, horizon=0.1)
    assert slow.granted == 1 and slow.offsets == (0.0,)  # the next is 2 s away (ramp), past bulk's 50 ms


def test_a_large_reserve_leaves_bulk_its_pace_on_a_contract(redis_client: redis.Redis, prefix: str) -> None:
    """A reserve of 50 at 500/s is 100 ms of the contract: it must not shrink bulk's horizon to
    nothing (bulk would then book one slot per call and a campaign crawl at a fraction of the rate)."""
    bucket = TokenBucket(redis_client, prefix)
    bulk = bucket.book("sendgrid", rate=500.0, burst=100, n=50, priority="bulk", reserve=50, margin=0.02, horizon=0.1)
    assert bulk.granted >= 10
    urgent = bucket.book("sendgrid", rate=500.0, burst=100, n=1, margin=0.02, horizon=0.1)
    assert urgent.granted == 1 and urgent.offsets[0] <= 0.05 + 0.005  # right behind bulk's 50 ms


def test_an_urgent_send_takes_the_earliest_slot_a_bulk_send_of_its_process_booked(
    redis_client: redis.Redis, prefix: str
) -> None:
    """Bulk sends booked their slots up to half the horizon ahead; an urgent send arriving then starts at
    the earliest of those slots rather than after them, and the bulk send it displaced books again."""

    async def run() -> tuple[float, list[float], int]:
        loop = asyncio.get_running_loop()
        dispenser = TokenDispenser(
            bucket=TokenBucket(redis_client, prefix), name="sendgrid", contract=lambda: (20.0, 1, 0), horizon=1.0
        )
        started: dict[str, float] = {}

        async def send(name: str, priority: str) -> None:
            await dispenser.acquire(priority)
            started[name] = loop.time()

        t0 = loop.time()
        bulk = [asyncio.ensure_future(send(f"bulk{i}", "bulk")) for i in range(12)]
        await asyncio.sleep(0.02)  # the first bulk send went at once; the next ones booked 50 ms apart
        booked = len(dispenser._booked_bulk)
        await send("urgent", "urgent")
        await asyncio.gather(*bulk)
        return started["urgent"] - t0, sorted(started[f"bulk{i}"] - t0 for i in range(12)), booked

    urgent, bulk, booked = asyncio.run(run())
    assert booked >= 5, "bulk sends were waiting for slots they had booked"
    assert urgent < 0.1, f"the urgent send took the next booked slot ({urgent:.3f} s), not one after 0.5 s of bulk"
    assert len(bulk) == 12 and bulk[-1] >= 12 / 20.0 - 0.01, "every bulk send still got a slot of its own"
