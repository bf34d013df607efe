"""Poison messages of every shape injected straight into the topics under load: each lands in the DLQ with a reason,
nothing else is disturbed (no role exits, no partition stalls, nothing lost or sent twice)."""

import time
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from confluent_kafka import Producer
from django.db import connection

from notifications.bus.config import producer_config
from notifications.bus.topics import delivery_topic, events_topic
from notifications.dispatch.messages import Header, channel_message
from notifications.outbox.envelope import build_event_envelope
from tests.faults.conftest import assert_exactly_once

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

#: Under the broker's 1 MB message limit as an event; rendered into an e-mail's text and HTML it is twice that.
HUGE = 900_000
DLQ_TIMEOUT = 60.0  # s for the triage to store every entry after the load drained


def channel_mail(tag: str, uid: int) -> bytes:
    """A well-formed e-mail message (sendable, if its headers were not poison)."""
    message = channel_message(
        event_id=tag, user_id=uid, channel="email", type="faults.order", category="transactional",
        urgency="normal", priority="transactional", created_at=datetime.now(UTC).isoformat(), locale="en",
        to={"email": f"u-{tag}@example.com"}, content={"subject": tag, "body": tag},
    )  # fmt: skip
    return orjson.dumps(message)


def event(tag: str, uid: int, type_: str, data: dict) -> bytes:
    envelope = build_event_envelope(
        event_id=uuid.uuid4(), type=type_, occurred_at=datetime.now(UTC), recipient=str(uid), data=data,
        source="faults", producer_event_id=tag,
    )  # fmt: skip
    return orjson.dumps(envelope)


def poison(run: str, uid: int) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """tag -> (topic, value, headers): every shape, each carrying its tag where the DLQ entry will show it."""
    t = {name: f"poison-{run}-{name}" for name in (
        "events-bad-json", "events-unknown-type", "events-huge", "email-bad-json", "email-not-v1",
        "email-not-before-abc", "email-not-before-inf", "email-attempt-x", "email-errors-not-json",
    )}  # fmt: skip
    email, events = delivery_topic("email"), events_topic()
    return {
        t["events-bad-json"]: (events, b'{"v": 1, "id": "' + t["events-bad-json"].encode() + b'", ', {}),
        t["events-unknown-type"]: (events, event(t["events-unknown-type"], uid, "faults.no-such-type", {}), {}),
        t["events-huge"]: (events, event(t["events-huge"], uid, "faults.order", {"headline": "x" * HUGE}), {}),
        t["email-bad-json"]: (email, b"\xff{not json " + t["email-bad-json"].encode(), {}),
        t["email-not-v1"]: (email, orjson.dumps({"v": 2, "id": t["email-not-v1"]}), {}),
        t["email-not-before-abc"]: (email, channel_mail(t["email-not-before-abc"], uid), {Header.NOT_BEFORE: "abc"}),
        t["email-not-before-inf"]: (email, channel_mail(t["email-not-before-inf"], uid), {Header.NOT_BEFORE: "inf"}),
        t["email-attempt-x"]: (email, channel_mail(t["email-attempt-x"], uid), {Header.ATTEMPT: "x"}),
        t["email-errors-not-json"]: (email, channel_mail(t["email-errors-not-json"], uid), {Header.ERRORS: "{["}),
    }


def dead_letters(tags, django_db_blocker) -> dict[str, tuple[str, str]]:
    """tag -> (error class, error message) of the DLQ entry showing it."""
    found = {}
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        for tag in tags:
            cursor.execute(
                "SELECT error_class, error_message FROM notifications_deadletter WHERE message_id LIKE %s"
                " OR raw_payload LIKE %s OR payload::text LIKE %s OR headers::text LIKE %s LIMIT 1",
                [f"%{tag}%"] * 4,
            )
            if row := cursor.fetchone():
                found[tag] = row
    return found


def test_poison_messages_of_every_shape_go_to_the_dlq_with_a_reason_and_disturb_nothing(run_case, django_db_blocker):
    injected = {}

    def fault(case):
        producer = Producer(producer_config())
        run = uuid.uuid4().hex[:6]
        for tag, (topic, value, headers) in poison(run, case.catalog.users[0]).items():
            headers = {Header.IDEMPOTENCY_KEY: tag, **headers}
            producer.produce(topic, value=value, key=tag.encode(), headers=list(headers.items()))
            injected[tag] = topic
        assert producer.flush(30) == 0, "every poison message reached the broker"
        time.sleep(0.5)

    figures, _ = run_case("poison", fault)
    assert_exactly_once(figures)
    deadline = time.monotonic() + DLQ_TIMEOUT
    while len(stored := dead_letters(injected, django_db_blocker)) < len(injected) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert set(stored) == set(injected), f"no DLQ entry for {sorted(set(injected) - set(stored))}"
    for tag, (error_class, error_message) in stored.items():
        print(f"FAULTS poison {tag}: {error_class}: {error_message[:100]}")
        assert error_class and error_message, f"{tag} is in the DLQ with a reason"
