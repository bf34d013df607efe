"""The pipelined worker loop's offset bookkeeping and provider admission, and the workers' delivery-log upsert."""

import asyncio
import uuid

import pytest

from notifications.delivery.pipeline import OffsetTracker
from notifications.delivery.provider_slots import InFlightLimit
from notifications.delivery_log import LogEntry, record_delivery_outcomes
from notifications.models import DeliveryLog


def committed(tracker: OffsetTracker) -> dict:
    offsets = tracker.committable()
    tracker.committed(offsets)
    return {(tp.topic, tp.partition): tp.offset for tp in offsets}


def test_offsets_are_committed_only_below_the_first_unfinished_message():
    tracker = OffsetTracker()
    a, b = ("notif.sms", 0), ("notif.sms", 1)
    for offset in (10, 11, 12, 13):
        tracker.add(a, offset)
    for offset in (5, 7):  # gaps in a partition's offsets (transaction markers) are fine
        tracker.add(b, offset)
    tracker.done(a, 11)
    tracker.done(a, 13)
    tracker.done(b, 7)
    assert committed(tracker) == {}, "10 and 5 are still in flight: nothing may be committed"
    tracker.done(a, 10)
    assert committed(tracker) == {a: 12}, "10 and 11 are done, 12 is not"
    assert committed(tracker) == {}, "unchanged offsets are not committed again"
    tracker.done(a, 12)
    tracker.done(b, 5)
    assert committed(tracker) == {a: 14, b: 8}
    assert tracker.pending() == 0
    tracker.add(a, 14)  # a job given up on stop (abandoned) is never marked done: the commit stays put
    tracker.add(a, 15)
    tracker.done(a, 15)
    assert committed(tracker) == {} and tracker.pending({a}) == 2


def test_revoked_partition_is_forgotten():
    tracker = OffsetTracker()
    tp = ("notif.sms.retry.5s", 3)
    tracker.add(tp, 1)
    tracker.forget(tp)
    tracker.done(tp, 1)  # a send that finishes after the revocation: ignored
    assert tracker.committable() == [] and tracker.pending() == 0


@pytest.mark.django_db
def test_delivery_log_upsert_never_moves_a_row_backwards():
    event = str(uuid.uuid4())

    def entry(status, **kw):
        return LogEntry(event_id=event, user_id=7, channel="sms", type="order.shipped", status=status, **kw)

    assert record_delivery_outcomes([entry("retrying", reason="transient: 503", attempts=1)]) == 1
    record_delivery_outcomes([entry("sent", provider="twilio", provider_message_id="SM1" + "x" * 300, attempts=2)])
    # a late report of an earlier attempt, and a duplicate in one batch (the higher rank wins)
    record_delivery_outcomes([entry("retrying", reason="late", attempts=1), entry("queued")])
    row = DeliveryLog.objects.get(event_id=event, user_id=7, channel="sms")
    assert (row.status, row.provider, row.attempts) == ("sent", "twilio", 2)
    assert row.provider_message_id.startswith("SM1") and len(row.provider_message_id) == 200
    assert row.reason == "" and row.type == "order.shipped"


def test_in_flight_limit_admits_first_come_first_served_and_cancelled_waiters_leave():
    async def scenario():
        limit = InFlightLimit(3)
        assert await limit.acquire(2) == 2
        second = asyncio.ensure_future(limit.acquire(2))  # does not fit: waits
        third = asyncio.ensure_future(limit.acquire(1))  # would fit, but queues behind the second
        big = asyncio.ensure_future(limit.acquire(10))  # a push to more devices than the limit: capped
        await asyncio.sleep(0.01)
        assert not (second.done() or third.done() or big.done()) and limit.used == 2
        second.cancel()  # a job given up on revoke: leaves the queue, the next one moves up
        await asyncio.sleep(0.01)
        assert third.done() and third.result() == 1 and limit.used == 3
        limit.release(2)
        limit.release(1)
        await asyncio.sleep(0.01)
        assert big.result() == 3 and limit.used == 3
        limit.release(3)
        assert limit.used == 0

    asyncio.run(scenario())
