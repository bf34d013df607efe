"""Parsing DLQ messages and storing them: idempotent rows, reopened after a failed replay, the triage
consumer end to end and its command."""

import signal
import subprocess
import sys
import time
import uuid

import orjson
import pytest
from django.core.management import call_command
from django.utils import timezone

from notifications.bus.topics import channel_topic, topic_name
from notifications.dlq.models import DeadLetter
from notifications.dlq.support import replay_dead_letters
from notifications.dlq.triage import DlqTriageHandler, parse_dead_letter
from tests.notifications.dlq.conftest import (
    FakeMessage,
    channel_message,
    channel_worker,
    dlq_headers,
    entry,
    produce_events_dlq,
    produce_for_worker,
    store,
)
from tests.waiting import wait_for


def test_parse_worker_dead_letter(settings):
    body = channel_message("sms", to={"phone": "+15005550001"}, user_id=42)
    headers = dlq_headers(body, error_class="invalid_contact", error="bad To", code="21211")
    msg = FakeMessage(
        channel_topic("sms", "dlq"),
        orjson.dumps(body),
        [(k, v.encode()) for k, v in headers.items()],
        _partition=2,
        _offset=17,
    )
    e = parse_dead_letter(msg, "sms")
    assert (e.message_id, e.channel, e.provider, e.recipient, e.user_id) == (
        body["id"],
        "sms",
        "twilio",
        "+15005550001",
        42,
    )
    assert (e.error_class, e.cause_class, e.error_code, e.attempts) == (
        "invalid_contact",
        "invalid_contact",
        "21211",
        1,
    )
    assert e.event_id == body["event_id"] and e.payload == body and e.origin_topic == channel_topic("sms")
    assert e.first_failed_at <= e.last_failed_at and len(e.errors) == 1
    assert (e.dlq_partition, e.dlq_offset) == (2, 17)


def test_parse_events_dlq_and_undecodable_messages():
    envelope = {"v": 1, "id": str(uuid.uuid4()), "type": "no.such.type", "recipient": "42", "data": {}}
    ev = parse_dead_letter(
        FakeMessage(topic_name("events.dlq"), orjson.dumps(envelope), [("error-class", b"unknown_type")]), "events"
    )
    assert ev.message_id == f"{envelope['id']}:42" and ev.user_id == 42 and ev.event_type == "no.such.type"

    junk = FakeMessage(
        topic_name("events.dlq"), b"{not json \x00\xff", [("error-class", b"invalid_json")], _partition=1, _offset=99
    )
    raw = parse_dead_letter(junk, "events")
    again = parse_dead_letter(junk, "events")
    assert raw.message_id.startswith("raw:") and raw.message_id == again.message_id
    assert raw.payload is None and "\x00" not in raw.raw_payload and raw.raw_payload.startswith("{not json")

    nul = parse_dead_letter(
        FakeMessage(
            channel_topic("email", "dlq"),
            b'{"v":1,"id":"x","s":"a\\u0000b"}',
            [("errors", b'[{"message": "bad\\u0000byte", "at": 1}]')],
        ),
        "email",
    )
    assert nul.payload is None and nul.raw_payload  # jsonb refuses \u0000: kept as text, never fails the batch
    assert nul.errors == [{"message": "badbyte", "at": 1}]

    long_id = parse_dead_letter(
        FakeMessage(channel_topic("email", "dlq"), b"{}", [("idempotency-key", b"k" * 400)]), "email"
    )
    assert long_id.message_id.startswith("sha:") and len(long_id.message_id) < 255


@pytest.mark.django_db(transaction=True)
def test_store_is_idempotent_and_a_new_failure_after_replay_reopens_the_row(support_user):
    e = entry(1)
    [stored] = store([e])
    assert stored.inserted and stored.category == "invalid_address"
    assert store([entry(1, body=e.payload)]) == [], "the same DLQ message again: nothing new"
    assert DeadLetter.objects.count() == 1

    replay_dead_letters(actor=support_user, ids=[stored.id])
    again = entry(1, body=e.payload)
    assert store([again]) == [], "the same DLQ position (a redelivery) never reopens"
    again.dlq_offset, again.last_failed_at = 500, timezone.now()
    again.error_class, again.cause_class, again.error_code = "max_attempts", "transient", "20503"
    [reopened] = store([again])
    row = DeadLetter.objects.get()
    assert not reopened.inserted
    assert (row.status, row.failure_count, row.category, row.dlq_offset) == ("open", 2, "provider_outage", 500)


@pytest.mark.django_db(transaction=True)
def test_a_batch_redelivered_through_the_handler_stores_nothing_twice(pager):
    body = channel_message("sms")
    headers = dlq_headers(body, error_class="invalid_contact", error="bad To", code="21211")
    encoded = [(k, v.encode()) for k, v in headers.items()]
    batch = [
        FakeMessage(channel_topic("sms", "dlq"), orjson.dumps(body), encoded),
        FakeMessage(topic_name("events.dlq"), b"garbage", [("error-class", b"invalid_json")], _offset=3),
    ]
    # Content PostgreSQL would refuse or that does not fit a column must never fail the batch.
    batch += [
        FakeMessage(
            channel_topic("email", "dlq"),
            b'{"v":1,"id":"n","s":"a\\u0000b"}',
            [("errors", b'[{"message": "x\\u0000y"}]'), ("error\x00-class", b"permanent\x00")],
            _offset=4,
        ),
        FakeMessage(
            channel_topic("email", "dlq"),
            b"[1, 2]",
            [("idempotency-key", b"k" * 400), ("provider", b"p" * 80), ("attempt", b"x")],
            _key=b"\xff" * 300,
            _offset=5,
        ),
    ]
    handler = DlqTriageHandler(pager=pager)
    handler.handle_batch(batch)
    handler.handle_batch(batch)
    assert DeadLetter.objects.count() == 4
    assert set(DeadLetter.objects.values_list("category", flat=True)) == {
        "invalid_address",
        "invalid_payload",
        "unknown",
    }


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_permanent_failure_becomes_a_categorised_row(running, triage, topics, providers, sandbox, pager):
    m = channel_message("sms", to={"phone": "+15005550001"}, user_id=1)  # Twilio's magic invalid number: 400 code 21211
    with running(channel_worker("sms")), triage():
        produce_for_worker(m)
        row = wait_for(lambda: DeadLetter.objects.filter(message_id=m["id"]).first(), timeout=60)
    assert (row.channel, row.provider, row.recipient, row.user_id, row.event_id) == (
        "sms",
        "twilio",
        "+15005550001",
        m["user_id"],
        m["event_id"],
    )
    assert (row.category, row.status, row.error_class, row.error_code, row.attempts) == (
        "invalid_address",
        "open",
        "invalid_contact",
        "21211",
        1,
    )
    assert row.payload == m and row.origin_topic == channel_topic("sms")
    assert row.errors[0]["code"] == "21211" and row.first_failed_at <= row.last_failed_at
    assert row.rule is not None and row.fingerprint and not row.page_pending and row.paged_at is None
    assert pager.receiver.bodies == [], "a known category pages nobody"

    with triage():  # a new consumer group reads the topic again from the start
        time.sleep(2.0)
    assert DeadLetter.objects.filter(message_id=m["id"]).count() == 1, "re-consuming never duplicates a row"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_run_dlq_triage_command_stores_and_stops_on_sigterm(topics, subprocess_env):
    call_command("run_dlq_triage", "--recategorise")
    env = {**subprocess_env, "KAFKA_TOPIC_PREFIX": topics, "DLQ_PAGE_WEBHOOK_URL": ""}
    proc = subprocess.Popen([sys.executable, "manage.py", "run_dlq_triage"], env=env, stderr=subprocess.PIPE)
    try:
        produce_events_dlq(b"{broken", "invalid_json", "not JSON")
        wait_for(lambda: DeadLetter.objects.filter(channel="events").exists(), timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    row = DeadLetter.objects.get()
    assert (row.category, row.error_class, row.payload) == ("invalid_payload", "invalid_json", None)
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith(b"{")]
    assert any(line["msg"] == "dlq batch stored" and line["stored"] == 1 for line in lines), "JSON log lines"
