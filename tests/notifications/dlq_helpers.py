"""Helpers of the DLQ triage tests: fake and real DLQ messages, running triage/relay threads, a
webhook receiver that records pages."""

import http.server
import threading
import time
import uuid
from dataclasses import dataclass, field

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, Producer
from django.conf import settings

from notifications.bus.config import producer_config
from notifications.bus.topics import channel_topic, topic_name
from notifications.outbox.relay import OutboxRelay, RelayConfig, conninfo_from_django


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


def channel_message(channel: str = "sms", *, to: dict | None = None, user_id: int = 7) -> dict:
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


class RunningTriage:
    """The triage consumer in a thread (its own consumer group), like `run_dlq_triage`."""

    def __init__(self, pager, *, batch_size: int = 500):
        from notifications.dlq.triage import build_triage_runner

        self.runner = build_triage_runner(batch_size=batch_size, group=f"triage-{uuid.uuid4().hex[:6]}", pager=pager)
        self.runner.config.poll_timeout = 0.2
        self.thread = threading.Thread(target=self.runner.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.runner.assigned.wait(20), "triage got its partitions"
        return self

    def __exit__(self, *exc):
        self.runner.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "triage stops on request"


class RunningRelay:
    """The outbox relay in a thread: replays reach Kafka the way they do in production."""

    def __init__(self):
        self.relay = OutboxRelay(
            RelayConfig(
                conninfo=conninfo_from_django(),
                producer_config=producer_config(),
                buckets=settings.OUTBOX_BUCKETS,
                poll_interval=0.2,
            )
        )
        self.thread = threading.Thread(target=self.relay.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.relay.stop_event.set()
        self.thread.join(30)


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
