"""Fixtures and helpers of the DLQ tests: dead letters (parsed, stored, or produced to Kafka), support
staff, a pager with a recording webhook, and the triage consumer, a worker and the relay in threads."""

import http.server
import threading
import time
import uuid
from dataclasses import dataclass, field

import orjson
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Producer
from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.utils import timezone

from notifications.bus.config import producer_config
from notifications.bus.topics import channel_topic, delivery_topic, topic_name
from notifications.delivery.wiring import build_worker_runner
from notifications.dlq.paging import Pager
from notifications.dlq.rules import RuleBook
from notifications.dlq.signals import SUPPORT_GROUP
from notifications.dlq.storing import DeadLetterEntry, StoredDeadLetter, categorise_entries, store_dead_letters
from notifications.dlq.triage import build_triage_runner
from notifications.models import DeliveryLog
from notifications.outbox.relay import OutboxRelay, RelayConfig, conninfo_from_django
from notifications.redis_client import get_redis


# --- dead letters ---------------------------------------------------------------------------------
def channel_message(channel: str = "sms", *, to: dict | None = None, user_id: int = 7) -> dict:
    """A channel message as the dispatcher builds it."""
    from notifications.dispatch.messages import channel_message as build_channel_message

    to = to or {"sms": {"phone": "+4915112345678"}, "email": {"email": "ada@example.com"}}.get(channel, {})
    return build_channel_message(
        event_id=str(uuid.uuid4()),
        user_id=user_id,
        channel=channel,
        type="order.shipped",
        category="transactional",
        urgency="normal",
        priority="transactional",
        created_at="2026-11-25T10:00:00+00:00",
        locale="en",
        to=to,
        content={"body": "Shipped"},
    )


def dlq_headers(
    body: dict,
    *,
    error_class: str,
    error: str,
    provider: str = "twilio",
    code: str = "",
    cause: str | None = None,
    attempts: int = 1,
    channel: str | None = None,
) -> dict[str, str]:
    """Headers as the worker's `_release_and_dead_letter` writes them."""
    now = time.time()
    history = [
        {
            "at": round(now - 1, 3),
            "provider": provider,
            "error_class": cause or error_class,
            "status": 400,
            "code": code,
            "message": error,
        }
    ]
    return {
        "idempotency-key": body["id"],
        "attempt": str(attempts),
        "first-attempt-at": f"{now - 2:.3f}",
        "origin-topic": channel_topic(channel or body["channel"]),
        "error-class": error_class,
        "error": error,
        "errors": orjson.dumps(history).decode(),
        "provider": provider,
    }


@dataclass
class FakeMessage:
    """Quacks like a confluent_kafka.Message for the parser (no broker needed)."""

    _topic: str
    _value: bytes | None
    _headers: list[tuple[str, bytes]] = field(default_factory=list)
    _key: bytes | None = b"1"
    _partition: int = 0
    _offset: int = 0
    _timestamp_ms: int = 1_764_000_000_000

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return self._key

    def value(self):
        return self._value

    def headers(self):
        return self._headers

    def timestamp(self):
        return (TIMESTAMP_CREATE_TIME, self._timestamp_ms)

    def error(self):
        return None


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
    """A parsed dead letter of a channel message (number `i`: its own recipient, user and DLQ offset)."""
    to = {"phone": f"+49151{i:07d}"} if channel == "sms" else {"email": f"user{i}@example.com"}
    body = body or channel_message(channel, to=to, user_id=1000 + i)
    return DeadLetterEntry(
        message_id=body["id"],
        channel=channel,
        dlq_topic=channel_topic(channel, "dlq"),
        dlq_partition=0,
        dlq_offset=i,
        first_failed_at=timezone.now(),
        last_failed_at=timezone.now(),
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


def store(entries: list[DeadLetterEntry]) -> list[StoredDeadLetter]:
    """Categorise with the rules in the database and store, as the triage consumer does."""
    categorise_entries(entries, RuleBook().rules())
    return store_dead_letters(entries=entries)


# --- Kafka --------------------------------------------------------------------------------------
def produce_dlq(items: list[tuple[str, bytes, dict[str, str]]]) -> None:
    """Produce (topic, value, headers) triples and wait for the broker's acknowledgement."""
    producer = Producer(producer_config())
    for topic, value, headers in items:
        producer.produce(topic, key=b"7", value=value, headers=list(headers.items()))
    assert producer.flush(30) == 0


def produce_channel_dlq(body: dict, **kwargs) -> None:
    channel = body["channel"]
    produce_dlq([(channel_topic(channel, "dlq"), orjson.dumps(body), dlq_headers(body, **kwargs))])


def produce_events_dlq(value: bytes, error_class: str, error: str) -> None:
    headers = {"origin-topic": topic_name("events"), "error-class": error_class, "error": error}
    produce_dlq([(topic_name("events.dlq"), value, headers)])


def produce_for_worker(message: dict) -> None:
    """A channel message into its channel's priority lane, keyed by user, as the dispatcher sends it."""
    producer = Producer(producer_config())
    producer.produce(
        delivery_topic(message["channel"]),
        key=str(message["user_id"]).encode(),
        value=orjson.dumps(message),
        headers=[("idempotency-key", message["id"].encode())],
    )
    assert producer.flush(30) == 0


def delivery_status(message: dict) -> str | None:
    """The delivery log's status of a channel message (None until the worker settled it)."""
    row = DeliveryLog.objects.filter(
        event_id=message["event_id"], user_id=message["user_id"], channel=message["channel"]
    ).first()
    return row.status if row else None


def channel_worker(channel: str):
    """A channel worker's runner in its own consumer group (it sees only this test's messages)."""
    return build_worker_runner(channel, group=f"w-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def triage(running, pager):
    """`with triage():` runs the triage consumer for the block, like `run_dlq_triage`, in its own
    consumer group (it reads its topics from the start) and paging through `pager`; leaving the block
    stops it and re-raises whatever it raised."""

    def start(*, batch_size: int = 500):
        runner = build_triage_runner(batch_size=batch_size, group=f"triage-{uuid.uuid4().hex[:6]}", pager=pager)
        runner.config.poll_timeout = 0.2
        return running(runner)

    return start


@pytest.fixture
def relay(running):
    """`with relay():` runs the outbox relay for the block, so replays reach Kafka as in production;
    leaving the block stops it and re-raises whatever it raised."""

    def start():
        config = RelayConfig(
            conninfo=conninfo_from_django(),
            producer_config=producer_config(),
            buckets=settings.OUTBOX_BUCKETS,
            poll_interval=0.2,
        )
        return running(OutboxRelay(config))

    return start


@pytest.fixture
def providers(sandbox_providers):
    """SendGrid and Twilio rows, talking to the sandboxes (reset to their default behaviour)."""
    return sandbox_providers("sendgrid", "twilio")


# --- paging ---------------------------------------------------------------------------------------
class WebhookReceiver:
    """A local HTTP endpoint that records every page posted to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                receiver.bodies.append(orjson.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/page"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pager(settings):
    """A pager with its own Redis window namespace (no page window shared between tests); the pages it
    posts are in `pager.receiver.bodies`."""
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


# --- support staff --------------------------------------------------------------------------------
def staff_user(django_user_model, name: str, *, group: str | None = None, perms: tuple[str, ...] = ()):
    """A staff user, in `group` and/or holding the `dlq` permissions `perms` (codenames)."""
    user = django_user_model.objects.create_user(username=name, password="pw", is_staff=True)
    if group:
        user.groups.add(Group.objects.get(name=group))
    if perms:
        user.user_permissions.add(*Permission.objects.filter(content_type__app_label="dlq", codename__in=perms))
    return django_user_model.objects.get(pk=user.pk)  # fresh: no permission cache


@pytest.fixture
def support_user(db, django_user_model):
    return staff_user(django_user_model, "support", group=SUPPORT_GROUP)


@pytest.fixture
def viewer_user(db, django_user_model):
    """Staff who may look at dead letters, but is not in Support."""
    return staff_user(django_user_model, "viewer", perms=("view_deadletter",))


@pytest.fixture
def support_client(client, support_user):
    client.force_login(support_user)
    return client
