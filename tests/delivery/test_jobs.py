"""Reading a polled batch into delivery jobs: malformed messages never stop a worker, and a retry
tier's head that is due much later than the tier's delay does not hold up the messages behind it."""

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from notifications.delivery.jobs import read_batch

NOW = 1_800_000_000.0
TIER_10M = "notif.email.retry.10m"


def message(offset: int, *, topic: str = TIER_10M, headers=None, value=None, parked_at: float = NOW) -> Message:
    body = value if value is not None else orjson.dumps({"v": 1, "id": f"m{offset}", "channel": "email"})
    return Message(
        topic=topic,
        partition=0,
        offset=offset,
        key=b"k",
        value=body,
        headers=[(k, v.encode()) for k, v in (headers or {}).items()],
        timestamp=(TIMESTAMP_CREATE_TIME, int(parked_at * 1000)),
    )


def test_malformed_headers_and_bodies_are_unreadable_with_a_reason_and_the_rest_is_read():
    batch = read_batch(
        [
            message(1, topic="notif.email", headers={"not-before": "abc"}),
            message(2, topic="notif.email", headers={"attempt": "two"}),
            message(3, topic="notif.email", headers={"errors": "{not json"}),
            message(4, topic="notif.email", headers={"errors": '{"a": 1}'}),
            message(5, topic="notif.email", value=b"\xff\xfe"),
            message(6, topic="notif.email", value=b'{"v": 2}'),
            message(7, topic="notif.email"),
        ],
        now=NOW,
    )
    assert [u.message.offset() for u in batch.unreadable] == [1, 2, 3, 4, 5, 6]
    assert all(u.error_class == "invalid_message" and u.reason for u in batch.unreadable)
    assert "abc" in batch.unreadable[0].reason
    assert [j.message.offset() for j in batch.jobs] == [7]


def test_a_head_not_due_holds_its_partition_until_it_is_due():
    batch = read_batch(
        [message(1, headers={"not-before": str(NOW + 30)}, parked_at=NOW - 60), message(2)],
        now=NOW,
        monotonic=lambda: 100.0,
    )
    assert batch.jobs == [] and batch.recirculate == []
    assert batch.deferrals == {(TIER_10M, 0): (1, 130.0)}, "paused until the head is due; 2 waits behind it"


def test_a_wait_longer_than_the_tier_pauses_the_partition_only_for_the_tiers_delay():
    batch = read_batch(
        [message(1, headers={"not-before": str(NOW + 1800)}, parked_at=NOW - 100)], now=NOW, monotonic=lambda: 0.0
    )
    assert batch.deferrals == {(TIER_10M, 0): (1, 500.0)}, "600 s after it was parked, not 1800 s from now"


def test_a_head_that_waited_its_tiers_delay_but_is_not_due_is_parked_again_and_the_rest_flows():
    long_wait = message(1, headers={"not-before": str(NOW + 1200)}, parked_at=NOW - 600)
    due = message(2, headers={"not-before": str(NOW - 1)}, parked_at=NOW - 600)
    batch = read_batch([long_wait, due], now=NOW)
    assert batch.recirculate == [long_wait], "back to the end of its tier (a Retry-After of 30 min, say)"
    assert [j.message.offset() for j in batch.jobs] == [2], "the message behind it is not held up"
    assert batch.deferrals == {}


def test_a_head_due_just_after_its_tiers_delay_is_waited_for():
    batch = read_batch(
        [message(1, headers={"not-before": str(NOW + 0.5)}, parked_at=NOW - 600)], now=NOW, monotonic=lambda: 0.0
    )
    assert batch.recirculate == [] and batch.deferrals == {(TIER_10M, 0): (1, 0.5)}


def test_a_not_before_that_is_no_time_is_unreadable_rather_than_pausing_its_partition_for_ever():
    batch = read_batch(
        [
            message(1, topic="notif.email", headers={"not-before": "inf"}),
            message(2, topic="notif.email", headers={"not-before": "nan"}),
            message(3, topic="notif.email", headers={"not-before": "-infinity"}),
            message(4, topic="notif.email"),
        ],
        now=NOW,
    )
    assert [u.message.offset() for u in batch.unreadable] == [1, 2, 3]
    assert all(u.error_class == "invalid_message" and "not-before" in u.reason for u in batch.unreadable)
    assert batch.deferrals == {} and [j.message.offset() for j in batch.jobs] == [4]
