"""Replay and discard (support.py): through the outbox with a real worker, exactly once, to the right
topic and lane."""

import time
import uuid

import orjson
import pytest
from django.utils import timezone

from notifications.bus.topics import channel_topic, delivery_topic, events_topic, topic_name
from notifications.delivery.claims import SKIPPED
from notifications.dlq.models import DeadLetter, DlqAudit
from notifications.dlq.storing import DeadLetterEntry
from notifications.dlq.support import replay_dead_letters
from notifications.models import OutboxEvent
from notifications.priority import Lane
from tests.kafka_helpers import consume_matching
from tests.notifications.dlq.conftest import (
    channel_message,
    channel_worker,
    delivery_status,
    entry,
    produce_channel_dlq,
    produce_for_worker,
    store,
)
from tests.waiting import wait_for


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_replay_after_the_fault_is_fixed_is_delivered_exactly_once(
    running, triage, relay, topics, providers, sandbox, pager, support_user, settings
):
    settings.RETRY_MAX_ATTEMPTS, settings.RETRY_BASE_DELAY = 2, 0.01  # a short retry budget, spent in-process
    settings.PROVIDER_BREAKER_FAILURES = 100  # keep the circuit closed: we want the DLQ, not a failover
    twilio = sandbox.client("twilio")
    twilio.configure(errors={"transient": 1.0})  # an outage: every send answers 5xx until fixed
    m = channel_message("sms", to={"phone": "+4915112340077"}, user_id=1)
    with running(channel_worker("sms")), triage(), relay():
        produce_for_worker(m)
        row = wait_for(lambda: DeadLetter.objects.filter(message_id=m["id"]).first(), timeout=60)
        assert (row.status, row.category, row.error_class, row.cause_class, row.attempts) == (
            "open",
            "provider_outage",
            "max_attempts",
            "transient",
            2,
        )

        # Replayed while the fault is still there: it fails again and the row is reopened.
        first = replay_dead_letters(actor=support_user, ids=[row.pk])
        assert first.count == 1
        wait_for(lambda: DeadLetter.objects.filter(pk=row.pk, status="open", failure_count=2).exists(), timeout=60)

        twilio.configure(errors={"transient": 0.0})  # fixed
        second = replay_dead_letters(actor=support_user, ids=[row.pk])
        assert second.count == 1 and second.audit_id != first.audit_id
        wait_for(lambda: delivery_status(m) == "sent", timeout=60)
        time.sleep(1.0)  # give any duplicate the chance to go out
    stats = twilio.stats()
    assert stats["accepted"] == 1 and stats["duplicates"]["keys"] == 0
    [request] = twilio.requests()
    assert request["idempotency_key"] == m["id"]
    row.refresh_from_db()
    assert (row.status, row.replay_count, row.last_audit_id) == ("replayed", 2, second.audit_id)
    replays = consume_matching(
        channel_topic("sms"), lambda x: dict(x.headers() or []).get("replay") is not None, expected=2
    )
    headers = [dict(x.headers()) for x in replays]
    assert {h["replay"].decode() for h in headers} == {str(first.audit_id), str(second.audit_id)}
    assert all(h["idempotency-key"].decode() == m["id"] and "attempt" not in h and "errors" not in h for h in headers)
    audit = DlqAudit.objects.get(pk=second.audit_id)
    assert (audit.action, audit.actor, audit.count) == ("replay", support_user, 1)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_replay_of_a_message_that_was_already_delivered_is_not_sent_again(
    running, triage, relay, topics, providers, sandbox, pager, support_user
):
    m = channel_message("sms", to={"phone": "+4915112340088"}, user_id=1)
    skipped_before = SKIPPED.labels("sms")._value.get()
    with running(channel_worker("sms")), triage(), relay():
        produce_for_worker(m)
        wait_for(lambda: delivery_status(m) == "sent", timeout=60)
        # A duplicate copy of it that failed (say produced twice upstream) sits in the DLQ.
        produce_channel_dlq(m, error_class="max_attempts", cause="transient", error="503", code="20503")
        row = wait_for(lambda: DeadLetter.objects.filter(message_id=m["id"]).first(), timeout=60)
        result = replay_dead_letters(actor=support_user, ids=[row.pk])
        assert result.count == 1
        wait_for(lambda: SKIPPED.labels("sms")._value.get() - skipped_before >= 1, timeout=60)
        time.sleep(0.5)
    assert sandbox.client("twilio").stats()["accepted"] == 1, "dedup says sent: the replay is skipped"
    row.refresh_from_db()
    assert row.status == "replayed"


def test_replay_targets_and_markers(db, support_user, settings):
    channel_entry = entry(1)
    events_body = {"v": 1, "id": str(uuid.uuid4()), "type": "order.new", "recipient": "9", "data": {}}
    ev = DeadLetterEntry(
        message_id=f"{events_body['id']}:9",
        channel="events",
        dlq_topic=topic_name("events.dlq"),
        dlq_partition=0,
        dlq_offset=1,
        first_failed_at=timezone.now(),
        last_failed_at=timezone.now(),
        origin_topic=topic_name("events"),
        message_key="9",
        payload=events_body,
        error_class="unknown_type",
    )
    render = entry(
        2,
        channel="email",
        error_class="render_error",
        cause="",
        code="",
        body={"v": 1, "id": "e1:5:email", "event": {**events_body, "recipient": "5"}, "channel": "email"},
    )
    render.origin_topic = topic_name("events")
    junk = DeadLetterEntry(
        message_id="raw:x",
        channel="events",
        dlq_topic=topic_name("events.dlq"),
        dlq_partition=0,
        dlq_offset=2,
        first_failed_at=timezone.now(),
        last_failed_at=timezone.now(),
        raw_payload="{oops",
        error_class="invalid_json",
    )
    store([channel_entry, ev, render, junk])
    result = replay_dead_letters(actor=support_user, queryset=DeadLetter.objects.all(), selection="test")
    assert (result.count, result.skipped) == (3, 1), "nothing to replay for the undecodable one"
    rows = {r.topic: r for r in OutboxEvent.objects.all()}
    assert set(rows) == {channel_topic("sms"), topic_name("events")} and OutboxEvent.objects.count() == 3

    def headers(r):
        return r.headers if isinstance(r.headers, dict) else orjson.loads(r.headers)

    def payload(r):
        return r.payload if isinstance(r.payload, dict) else orjson.loads(r.payload)

    sms = rows[channel_topic("sms")]
    assert headers(sms) == {"idempotency-key": channel_entry.message_id, "replay": str(result.audit_id)}
    assert payload(sms) == channel_entry.payload and sms.key == "7"
    events = sorted(
        (payload(r)["recipient"], headers(r)["idempotency-key"], r.key)
        for r in OutboxEvent.objects.filter(topic=topic_name("events"))
    )
    assert events == [("5", f"{events_body['id']}:5", "5"), ("9", f"{events_body['id']}:9", "9")]
    assert DeadLetter.objects.get(message_id="raw:x").status == "open"


def test_a_replay_goes_to_the_lane_of_the_message_class(db, support_user):
    """Whatever lane a message failed in, its replay travels in the lane of its class."""
    from notifications.models import Category, NotificationType

    NotificationType.objects.create(key="weekly.digest", name="Digest", category=Category.MARKETING)
    bulk = entry(1, channel="email", body={**channel_message("email", user_id=1001), "priority": "bulk"})
    bulk.origin_topic = delivery_topic("email")  # failed before lanes existed: its class decides now
    urgent = entry(2, channel="email", body={**channel_message("email", user_id=1002), "priority": "urgent"})
    event = {"v": 1, "id": str(uuid.uuid4()), "type": "weekly.digest", "recipient": "9", "data": {}}
    digest_event = entry(3, channel="events", body=event)
    digest_event.message_id, digest_event.origin_topic = f"{event['id']}:9", events_topic()
    store([bulk, urgent, digest_event])
    result = replay_dead_letters(actor=support_user, queryset=DeadLetter.objects.all(), selection="test")
    assert (result.count, result.skipped) == (3, 0)
    rows = {row.payload_json["id"]: (row.topic, row.lane) for row in OutboxEvent.objects.all()}
    assert rows == {
        bulk.payload["id"]: (delivery_topic("email", Lane.BULK), 1),
        urgent.payload["id"]: (delivery_topic("email"), 0),
        event["id"]: (events_topic(Lane.BULK), 1),
    }
