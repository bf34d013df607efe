"""DLQ triage and replay: rules, storing, paging, replay through the outbox with a real worker,
permissions, the admin, and a 10,000-entry replay by filter. Real PostgreSQL, Redis, Kafka, sandboxes."""

import logging
import signal
import subprocess
import sys
import time
import uuid

import orjson
import pytest
from django.contrib.auth.models import Group, Permission
from django.core import mail
from django.core.exceptions import PermissionDenied
from django.core.management import call_command

from notifications.bus.topics import channel_topic, delivery_topic, events_topic, topic_name
from notifications.delivery.worker import SKIPPED
from notifications.dlq import paging
from notifications.dlq.models import DeadLetter, DlqAudit, TriageRule
from notifications.dlq.paging import Pager, page_unknown_dead_letters
from notifications.dlq.rules import (
    DEFAULT_RULES,
    CompiledRule,
    TriageFacts,
    categorise,
    compile_rules,
    fingerprint,
    normalise_message,
)
from notifications.dlq.signals import SUPPORT_GROUP, SUPPORT_PERMISSIONS
from notifications.dlq.storing import DeadLetterEntry, categorise_entries, store_dead_letters
from notifications.dlq.support import discard_dead_letters, recategorise_dead_letters, replay_dead_letters
from notifications.dlq.triage import DlqTriageHandler, parse_dead_letter
from notifications.models import KillSwitch, OutboxEvent, Provider
from notifications.priority import Lane
from notifications.redis_client import get_redis
from tests.kafka_helpers import consume_matching
from tests.notifications.dlq_helpers import (
    FakeMessage,
    RunningRelay,
    RunningTriage,
    WebhookReceiver,
    channel_message,
    dlq_headers,
    produce_channel_dlq,
    produce_dlq,
    produce_events_dlq,
)
from tests.notifications.test_worker import log_status, message, produce, wait_for, worker


# --- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture
def providers(db, sandbox):
    for name in ("sendgrid", "twilio"):
        sandbox.client(name).reset(config=True)
    Provider.objects.bulk_create(
        [
            Provider(name="sendgrid", channel="email", kind="sendgrid", rate=1000, burst=50),
            Provider(name="twilio", channel="sms", kind="twilio", rate=1000, burst=50),
        ]
    )


@pytest.fixture
def pager(settings):
    """A pager with its own Redis window namespace (no page window shared between tests)."""
    settings.DLQ_PAGE_EMAILS = ["oncall@example.com"]
    with WebhookReceiver() as receiver:
        settings.DLQ_PAGE_WEBHOOK_URL = receiver.url
        p = Pager(
            redis_client=get_redis(),
            key_prefix=f"{settings.REDIS_KEY_PREFIX}{uuid.uuid4().hex[:8]}:",
            window_seconds=60,
            webhook_url=receiver.url,
            emails=["oncall@example.com"],
        )
        p.receiver = receiver
        yield p


def _user(django_user_model, name: str, *, group: str | None = None, perms: tuple[str, ...] = ()):
    user = django_user_model.objects.create_user(username=name, password="pw", is_staff=True)
    if group:
        user.groups.add(Group.objects.get(name=group))
    if perms:
        user.user_permissions.add(*Permission.objects.filter(content_type__app_label="dlq", codename__in=perms))
    return django_user_model.objects.get(pk=user.pk)  # fresh: no permission cache


@pytest.fixture
def support_user(db, django_user_model):
    return _user(django_user_model, "support", group=SUPPORT_GROUP)


@pytest.fixture
def viewer_user(db, django_user_model):
    """Staff who may look at dead letters, but is not in Support."""
    return _user(django_user_model, "viewer", perms=("view_deadletter",))


@pytest.fixture
def support_client(client, support_user):
    client.force_login(support_user)
    return client


def entry(
    i: int = 0,
    *,
    channel="sms",
    error_class="invalid_contact",
    cause=None,
    code="21211",
    message="The 'To' number is not a valid phone number.",
    provider="twilio",
    body=None,
) -> DeadLetterEntry:
    to = {"phone": f"+49151{i:07d}"} if channel == "sms" else {"email": f"user{i}@example.com"}
    body = body or channel_message(channel, to=to, user_id=1000 + i)
    e = DeadLetterEntry(
        message_id=body["id"],
        channel=channel,
        dlq_topic=channel_topic(channel, "dlq"),
        dlq_partition=0,
        dlq_offset=i,
        first_failed_at=_now(),
        last_failed_at=_now(),
        provider=provider,
        recipient=str(body.get("to", {}).get("phone") or body.get("to", {}).get("email") or ""),
        user_id=body.get("user_id"),
        event_id=body.get("event_id", ""),
        event_type=body.get("type", ""),
        origin_topic=channel_topic(channel),
        message_key="7",
        payload=body,
        headers={"idempotency-key": body["id"]},
        error_class=error_class,
        cause_class=cause or error_class,
        error_code=code,
        error_message=message,
        errors=[{"at": time.time(), "error_class": cause or error_class, "code": code, "message": message}],
        attempts=1,
    )
    return e


def _now():
    from django.utils import timezone

    return timezone.now()


def store(entries: list[DeadLetterEntry]):
    from notifications.dlq.rules import RuleBook

    categorise_entries(entries, RuleBook().rules())
    return store_dead_letters(entries=entries)


# --- rules (pure) ---------------------------------------------------------------------------------
class _Rule:
    def __init__(self, id, **kw):
        self.id, self.name, self.priority, self.enabled = id, kw.pop("name", f"r{id}"), kw.pop("priority", 100), True
        for f in ("channel", "provider", "error_classes", "cause_classes", "provider_codes", "message_pattern"):
            setattr(self, f, kw.pop(f, ""))
        self.category = kw.pop("category")


DEFAULTS = compile_rules(_Rule(i, **r) for i, r in enumerate(DEFAULT_RULES, 1))


@pytest.mark.parametrize(
    ("facts", "category"),
    [
        (TriageFacts("sms", "twilio", "invalid_contact", "invalid_contact", "21211"), "invalid_address"),
        (TriageFacts("email", "sendgrid", "permanent", "permanent", "http_400"), "invalid_payload"),
        (TriageFacts("events", "", "unknown_type", ""), "invalid_payload"),
        (TriageFacts("email", "sendgrid", "max_attempts", "config_error", "http_401"), "provider_auth"),
        (TriageFacts("push", "fcm", "permanent", "permanent", "", status=403), "provider_auth"),
        (TriageFacts("sms", "twilio", "max_attempts", "transient", "20503"), "provider_outage"),
        (TriageFacts("sms", "twilio", "max_age", "rate_limited", "20429"), "retries_exhausted"),
        (TriageFacts("sms", "twilio", "quantum_flux", "quantum_flux"), "unknown"),
    ],
)
def test_default_rules_categorise(facts, category):
    assert categorise(facts, DEFAULTS)[0] == category


def test_rules_first_match_by_priority_and_every_condition_must_hold():
    rules = compile_rules(
        [
            _Rule(1, priority=50, error_classes="permanent", category="invalid_payload"),
            _Rule(
                2,
                priority=10,
                error_classes="Permanent",
                provider="SendGrid",
                message_pattern=r"sender .* not verified",
                category="provider_auth",
            ),
            _Rule(3, priority=5, channel="push", provider_codes="UNREGISTERED, 404", category="invalid_address"),
        ]
    )
    sender = TriageFacts("email", "sendgrid", "permanent", message="The from address Sender X is NOT verified")
    assert categorise(sender, rules)[1].id == 2
    assert categorise(TriageFacts("email", "smtp", "permanent", message="sender x not verified"), rules)[1].id == 1
    assert categorise(TriageFacts("push", "fcm", "x", status=404), rules)[0] == "invalid_address"
    assert categorise(TriageFacts("sms", "twilio", "x", code="UNREGISTERED"), rules)[0] == "unknown"
    with pytest.raises(ValueError, match="regular expression"):
        compile_rules([_Rule(4, message_pattern="(", category="unknown")])


def test_fingerprint_groups_alike_failures_and_separates_different_ones():
    def facts(channel="sms", code="20503", message="timeout after 9 s to +4915199999999"):
        return TriageFacts(channel, "twilio", "max_attempts", "transient", code, message=message)

    a = facts(message="timeout after 10.2 s to +4915112345678")
    b = facts(message="Timeout after 9 s to +4915199999999")
    c = facts(code="20500")
    d = facts(channel="email", message="timeout after 9 s")
    assert fingerprint(a) == fingerprint(b)
    assert len({fingerprint(a), fingerprint(c), fingerprint(d)}) == 3
    assert normalise_message("user 3f2a9c1e-0b7d-4c61-9a55-0e2b7b1c9f00 at ada@example.com: https://x.io/a?b=1") == (
        "user <uuid> at <email>: <url>"
    )
    assert isinstance(DEFAULTS[0], CompiledRule)


# --- parsing (no broker) -------------------------------------------------------------------------
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


# --- storing ---------------------------------------------------------------------------------------
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
    again.dlq_offset, again.last_failed_at = 500, _now()
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


# --- end to end: a permanent failure becomes a categorised row ----------------------------------
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_permanent_failure_becomes_a_categorised_row(running, topics, providers, sandbox, pager):
    m = message("sms", to={"phone": "+15005550001"})  # Twilio's magic invalid number: 400 code 21211
    with running(worker("sms")), RunningTriage(pager):
        produce("sms", [m])
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

    with RunningTriage(pager):  # a new consumer group reads the topic again from the start
        time.sleep(2.0)
    assert DeadLetter.objects.filter(message_id=m["id"]).count() == 1, "re-consuming never duplicates a row"


# --- paging --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_unknown_error_pages_once_per_fingerprint_window(topics, pager, caplog):
    caplog.set_level(logging.ERROR, logger="notifications.dlq.paging")
    before = paging.PAGES._value.get()
    flood = [channel_message("sms", user_id=i) for i in range(300)]
    with RunningTriage(pager, batch_size=50):
        # One new failure, 300 times: the numbers in the message differ, it is the same failure.
        produce_dlq(
            [
                (
                    channel_topic("sms", "dlq"),
                    orjson.dumps(b),
                    dlq_headers(b, error_class="quantum_flux", error=f"flux capacitor {i} melted at {i * 7} GW"),
                )
                for i, b in enumerate(flood)
            ]
        )
        wait_for(lambda: DeadLetter.objects.filter(category="unknown").count() == 300, timeout=60)
        wait_for(lambda: not DeadLetter.objects.filter(page_pending=True).exists(), timeout=60)
        other = channel_message("email")
        produce_channel_dlq(other, error_class="quantum_flux", error="the ether is unreachable", provider="sendgrid")
        wait_for(lambda: len(pager.receiver.bodies) == 2, timeout=60)
        time.sleep(0.5)
    assert DeadLetter.objects.count() == 301
    assert len({fp for fp in DeadLetter.objects.filter(channel="sms").values_list("fingerprint", flat=True)}) == 1
    assert len(pager.receiver.bodies) == 2, "one page per fingerprint, however many entries"
    first = pager.receiver.bodies[0]
    assert first["channel"] == "sms" and first["error_class"] == "quantum_flux" and "admin_url" in first
    assert len(mail.outbox) == 2 and mail.outbox[0].to == ["oncall@example.com"]
    assert paging.PAGES._value.get() - before == 2
    assert sum(1 for r in caplog.records if r.levelno == logging.ERROR and r.msg.startswith("PAGE")) == 2
    assert DeadLetter.objects.exclude(paged_at=None).count() == 2

    # Later entries of a paged fingerprint, inside the window: stored, no page.
    late = channel_message("sms")
    with RunningTriage(pager):
        produce_channel_dlq(late, error_class="quantum_flux", error="flux capacitor 9 melted at 1 GW")
        wait_for(lambda: DeadLetter.objects.filter(message_id=late["id"], page_pending=False).exists(), timeout=60)
    assert len(pager.receiver.bodies) == 2


@pytest.mark.django_db(transaction=True)
def test_pending_pages_survive_a_crash_and_redis_down_fails_open(pager):
    [e] = [entry(1, error_class="quantum_flux", cause="quantum_flux", code="", message="new thing")]
    store([e])  # stored, then "crashed" before paging: the row stays pending
    assert DeadLetter.objects.get().page_pending
    report = page_unknown_dead_letters(pager=pager)
    assert (report.paged, report.entries) == (1, 1) and len(pager.receiver.bodies) == 1
    assert page_unknown_dead_letters(pager=pager).entries == 0

    import redis as redis_lib

    down = Pager(
        redis_client=redis_lib.Redis(port=1, socket_timeout=0.1, socket_connect_timeout=0.1),
        key_prefix="x:",
        webhook_url=pager.webhook_url,
    )
    assert down.acquire_window("abc") is True, "no window store: page rather than stay silent"


# --- replay with a real worker ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_replay_after_the_fault_is_fixed_is_delivered_exactly_once(
    running, topics, providers, sandbox, pager, support_user, settings
):
    settings.RETRY_MAX_ATTEMPTS, settings.RETRY_BASE_DELAY = 2, 0.01  # a short retry budget, spent in-process
    settings.PROVIDER_BREAKER_FAILURES = 100  # keep the circuit closed: we want the DLQ, not a failover
    twilio = sandbox.client("twilio")
    twilio.configure(errors={"transient": 1.0})  # an outage: every send answers 5xx until fixed
    m = message("sms", to={"phone": "+4915112340077"})
    with running(worker("sms")), RunningTriage(pager), RunningRelay():
        produce("sms", [m])
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
        wait_for(lambda: log_status(m) == "sent", timeout=60)
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
    running, topics, providers, sandbox, pager, support_user
):
    m = message("sms", to={"phone": "+4915112340088"})
    skipped_before = SKIPPED.labels("sms")._value.get()
    with running(worker("sms")), RunningTriage(pager), RunningRelay():
        produce("sms", [m])
        wait_for(lambda: log_status(m) == "sent", timeout=60)
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
        first_failed_at=_now(),
        last_failed_at=_now(),
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
        first_failed_at=_now(),
        last_failed_at=_now(),
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


# --- permissions and the admin --------------------------------------------------------------------
def test_support_group_has_sensible_permissions(db, django_user_model):
    group = Group.objects.get(name=SUPPORT_GROUP)
    granted = {
        f"{app_label}.{codename}"
        for app_label, codename in group.permissions.values_list("content_type__app_label", "codename")
    }
    assert granted == set(SUPPORT_PERMISSIONS)
    assert {"dlq.replay_deadletter", "dlq.discard_deadletter"} <= set(SUPPORT_PERMISSIONS)
    assert "dlq.change_deadletter" not in SUPPORT_PERMISSIONS and "dlq.delete_dlqaudit" not in SUPPORT_PERMISSIONS
    support = django_user_model.objects.create_user(username="s", is_staff=True)
    support.groups.add(group)
    assert support.has_perm("dlq.replay_deadletter") and support.has_perm("notifications.view_killswitch")


def test_only_support_may_replay_or_discard(db, client, viewer_user, support_user, django_user_model):
    [stored] = store([entry(1)])
    changelist = "/admin/dlq/deadletter/"

    nobody = _user(django_user_model, "nobody")
    client.force_login(nobody)
    assert client.get(changelist).status_code == 403

    client.force_login(viewer_user)
    page = client.get(changelist)
    assert page.status_code == 200 and b"replay_selected" not in page.content
    assert client.get(f"{changelist}replay-filtered/").status_code == 403
    assert client.post(f"{changelist}replay-filtered/", {"max_id": stored.id}).status_code == 403
    assert client.post(f"{changelist}drain/", {"channel": "email"}).status_code == 403
    client.post(changelist, {"action": "replay_selected", "_selected_action": [stored.id]})
    assert DeadLetter.objects.get().status == "open" and not OutboxEvent.objects.exists()
    with pytest.raises(PermissionDenied):
        replay_dead_letters(actor=viewer_user, ids=[stored.id])
    with pytest.raises(PermissionDenied):
        discard_dead_letters(actor=viewer_user, ids=[stored.id], reason="x")
    assert not DlqAudit.objects.exists()

    client.force_login(support_user)
    page = client.get(changelist)
    assert b"replay_selected" in page.content and b"Replay all matching this filter" in page.content
    response = client.post(changelist, {"action": "replay_selected", "_selected_action": [stored.id]})
    assert response.status_code == 302
    assert DeadLetter.objects.get().status == "replayed" and OutboxEvent.objects.count() == 1
    audit = DlqAudit.objects.get()
    assert (audit.action, audit.actor, audit.actor_name, audit.count) == ("replay", support_user, "support", 1)


def test_the_old_admin_addresses_redirect_to_the_dlq_app(db, support_client):
    """Pages sent before the DLQ was its own app link to /admin/notifications/deadletter/…"""
    old = support_client.get("/admin/notifications/deadletter/", {"fingerprint": "abc"})
    assert old.status_code == 302 and old["Location"] == "/admin/dlq/deadletter/?fingerprint=abc"
    rule = support_client.get("/admin/notifications/triagerule/1/change/")
    assert rule["Location"] == "/admin/dlq/triagerule/1/change/"
    assert support_client.get(old["Location"]).status_code == 200


def test_discard_asks_for_a_reason_and_is_audited(db, support_client, support_user):
    stored = store([entry(i) for i in range(3)])
    ids = [s.id for s in stored[:2]]
    changelist = "/admin/dlq/deadletter/"
    form = support_client.post(changelist, {"action": "discard_selected", "_selected_action": ids})
    assert form.status_code == 200 and b"Discard <strong>2</strong>" in form.content
    no_reason = support_client.post(
        changelist,
        {
            "action": "discard_selected",
            "_selected_action": ids,
            "apply": "yes",
            "reason": "",
            "index": 0,
            "select_across": 0,
        },
    )
    assert no_reason.status_code == 200 and DeadLetter.objects.filter(status="discarded").count() == 0
    done = support_client.post(
        changelist,
        {
            "action": "discard_selected",
            "_selected_action": ids,
            "apply": "yes",
            "reason": "user asked us to stop",
            "index": 0,
            "select_across": 0,
        },
    )
    assert done.status_code == 302
    assert set(DeadLetter.objects.filter(status="discarded").values_list("id", flat=True)) == set(ids)
    assert DeadLetter.objects.get(pk=ids[0]).discarded_reason == "user asked us to stop"
    audit = DlqAudit.objects.get()
    assert (audit.action, audit.actor, audit.count, audit.reason) == (
        "discard",
        support_user,
        2,
        "user asked us to stop",
    )


def test_admin_list_filters_search_groups_and_detail(db, support_client):
    stored = store(
        [entry(i) for i in range(3)]
        + [
            entry(
                9,
                channel="email",
                error_class="max_attempts",
                cause="transient",
                code="http_503",
                provider="sendgrid",
                message="Service Unavailable",
            )
        ]
    )
    changelist = "/admin/dlq/deadletter/"
    target = DeadLetter.objects.get(pk=stored[1].id)
    for query in (
        "?channel__exact=sms",
        "?category__exact=provider_outage",
        "?status__exact=open",
        "?provider=twilio",
        "?last_failed_at__gte=2020-01-01+00:00:00%2B00:00",
        f"?q={target.recipient}",
        f"?q={target.event_id}",
        f"?fingerprint={target.fingerprint}",
    ):
        assert support_client.get(changelist + query).status_code == 200, query
    found = support_client.get(changelist, {"q": target.recipient}).context["cl"].result_list
    assert [r.pk for r in found] == [target.pk]
    found = support_client.get(changelist, {"q": target.event_id}).context["cl"].result_list
    assert [r.pk for r in found] == [target.pk]
    outage = support_client.get(changelist, {"category__exact": "provider_outage"}).context["cl"].result_list
    assert [r.channel for r in outage] == ["email"]

    groups = support_client.get(f"{changelist}groups/")
    assert groups.status_code == 200
    counts = sorted(g["count"] for g in groups.context["groups"])
    assert counts == [1, 3], "three alike SMS failures, one e-mail outage"

    detail = support_client.get(f"{changelist}{target.pk}/change/")
    assert detail.status_code == 200
    assert target.payload["event_id"].encode() in detail.content and b"Error history" in detail.content
    assert b"21211" in detail.content


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_replay_of_ten_thousand_entries_by_filter_completes_and_is_audited(support_client, support_user, capsys):
    entries = [
        entry(i, error_class="max_attempts", cause="transient", code="20503", message="Service unavailable")
        for i in range(10_000)
    ]
    started = time.perf_counter()
    store(entries)
    stored_s = time.perf_counter() - started
    store([entry(20_000 + i) for i in range(25)])  # another category, not in the filter
    url = "/admin/dlq/deadletter/replay-filtered/?category__exact=provider_outage"
    confirm = support_client.get(url)
    assert confirm.status_code == 200 and confirm.context["count"] == 10_000
    assert b"<strong>10000</strong> dead letter(s) match" in confirm.content
    started = time.perf_counter()
    response = support_client.post(url, {"max_id": confirm.context["max_id"]})
    replay_s = time.perf_counter() - started
    assert response.status_code == 302 and "category__exact=provider_outage" in response["Location"]
    assert DeadLetter.objects.filter(category="provider_outage", status="replayed").count() == 10_000
    assert DeadLetter.objects.filter(status="open").count() == 25
    audit = DlqAudit.objects.get()
    assert (audit.action, audit.actor, audit.requested, audit.count, audit.skipped) == (
        "replay",
        support_user,
        10_000,
        10_000,
        0,
    )
    assert audit.finished_at and "category__exact=provider_outage" in audit.selection
    assert OutboxEvent.objects.filter(topic=channel_topic("sms")).count() == 10_000
    sample = OutboxEvent.objects.first()
    headers = sample.headers if isinstance(sample.headers, dict) else orjson.loads(sample.headers)
    assert headers["replay"] == str(audit.pk)
    with capsys.disabled():
        print(f"\n[dlq replay] 10,000 entries stored in {stored_s:.2f}s, replayed by filter in {replay_s:.2f}s")
    assert replay_s < 60

    # Replaying the same filter again replays nothing (already replayed), and says so.
    again = support_client.get(url)
    assert again.context["replayable"] == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_drain_of_parked_messages_from_the_dlq_admin(topics, support_client, support_user):
    from tests.kafka_helpers import produce_raw

    KillSwitch.objects.create(channel="email", mode="delay")
    body = channel_message("email")
    produce_raw(channel_topic("email", "delayed"), [("7", orjson.dumps(body))])
    page = support_client.get("/admin/dlq/deadletter/drain/")
    assert page.status_code == 200 and b"Drain email" in page.content
    refused = support_client.post("/admin/dlq/deadletter/drain/", {"channel": "email"}, follow=True)
    assert b"set it to normal" in refused.content and not DlqAudit.objects.exists()
    KillSwitch.objects.filter(channel="email").update(mode="normal")
    support_client.post("/admin/dlq/deadletter/drain/", {"channel": "email"})
    audit = DlqAudit.objects.get()
    assert (audit.action, audit.actor, audit.count, audit.selection) == ("drain", support_user, 1, "email")
    [moved] = consume_matching(
        channel_topic("email"), lambda m: orjson.loads(m.value())["id"] == body["id"], expected=1
    )
    assert moved is not None


# --- rules added later ------------------------------------------------------------------------------
def test_rules_added_later_are_reapplied_to_uncategorised_entries(db, support_client, support_user):
    stored = store(
        [entry(i, error_class="quantum_flux", cause="quantum_flux", code="", message="flux melted") for i in range(4)]
    )
    assert {s.category for s in stored} == {"unknown"}
    rule = TriageRule.objects.create(name="flux", priority=5, error_classes="quantum_flux", category="provider_outage")
    response = support_client.post(
        "/admin/dlq/triagerule/", {"action": "reapply_to_unknown", "_selected_action": [rule.pk]}
    )
    assert response.status_code == 302
    assert set(DeadLetter.objects.values_list("category", "rule_id")) == {("provider_outage", rule.pk)}
    assert not DeadLetter.objects.filter(page_pending=True).exists()
    assert DlqAudit.objects.get().action == "recategorise"
    assert recategorise_dead_letters() == {}, "nothing unknown is left"


# --- the command ------------------------------------------------------------------------------------
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
