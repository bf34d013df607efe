"""The DLQ triage consumer: every `notif.<channel>.dlq` and `notif.events.dlq` into `DeadLetter` rows."""

import hashlib
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message
from django.db.models import Count
from prometheus_client import Counter, Gauge

from notifications.bus.runner import ConsumerRunner
from notifications.bus.topics import channel_topic, topic_name
from notifications.channels import ALL_CHANNELS
from notifications.dispatch.messages import Header
from notifications.dlq.models import DeadLetter, DeadLetterCategory, DeadLetterSource, DeadLetterStatus
from notifications.dlq.paging import page_unknown_dead_letters
from notifications.dlq.rules import RuleBook
from notifications.dlq.storing import DeadLetterEntry, categorise_entries, store_dead_letters

log = logging.getLogger(__name__)

STORED = Counter("dlq_entries_stored_total", "Dead letters stored (new or reopened)", ["channel", "category"])
DUPLICATES = Counter("dlq_entries_duplicate_total", "DLQ messages already stored (redelivery or duplicate)")
OPEN_ENTRIES = Gauge("dlq_open_entries", "Open dead letters by category (refreshed periodically)", ["category"])

#: Unknown entries left pending (say by a crash between storing and paging) are paged on this tick.
PAGE_SWEEP_INTERVAL = 30.0
OPEN_GAUGE_INTERVAL = 30.0
#: Column widths of `DeadLetter` (a value that does not fit must never fail a whole batch).
_MAX = {"message_id": 255, "provider": 50, "recipient": 500, "event_id": 100, "event_type": 100, "topic": 249,
        "key": 255, "class": 50, "code": 100}  # fmt: skip
MAX_ERROR_MESSAGE = 5000
MAX_ERRORS_KEPT = 100
BIGINT = 2**63


def dlq_topics() -> dict[str, str]:
    """{full DLQ topic name: source channel}, the events DLQ included."""
    topics = {channel_topic(channel, "dlq"): channel for channel in ALL_CHANNELS}
    topics[topic_name("events.dlq")] = DeadLetterSource.EVENTS
    return topics


# --- parsing ------------------------------------------------------------------------------------
def _text(value: Any, limit: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).replace("\x00", "")[:limit]


def _headers(raw: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    return {_text(k, 200): _text(v, 20_000) for k, v in (raw or [])}


def _int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if -BIGINT <= number < BIGINT else None


def _epoch(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _load_json(value: bytes) -> tuple[Any, str]:
    """(payload, raw text): the JSON document, or None and the text when it is not storable JSON."""
    # PostgreSQL's jsonb refuses NUL characters (\u0000), so such a payload is kept as text.
    if value and b"\\u0000" not in value:
        try:
            return orjson.loads(value), ""
        except orjson.JSONDecodeError:
            pass
    return None, _text(value, 1_000_000)


def _recipient(payload: dict[str, Any]) -> str:
    """Who a message was for: the address, number, URL, device token or user id."""
    to = payload.get("to")
    if isinstance(to, dict):
        for field in ("email", "phone", "url"):
            if to.get(field):
                return str(to[field])
        devices = to.get("devices")
        if isinstance(devices, list) and devices and isinstance(devices[0], list) and len(devices[0]) > 1:
            return str(devices[0][1])
        if to.get("user_id") is not None:
            return str(to["user_id"])
    for field in ("user_id", "recipient"):
        if payload.get(field) not in (None, ""):
            return str(payload[field])
    return ""


def _raw_id(topic: str, partition: int, offset: int) -> str:
    return "raw:" + hashlib.sha256(f"{topic}\x1f{partition}\x1f{offset}".encode()).hexdigest()[:40]


def _bounded_id(message_id: str) -> str:
    if len(message_id) <= _MAX["message_id"]:
        return message_id
    return "sha:" + hashlib.sha256(message_id.encode()).hexdigest()


def parse_dead_letter(message: Message, channel: str, *, now: Callable[[], datetime] | None = None) -> DeadLetterEntry:
    """A DLQ message as an entry. Never raises on content: what cannot be read is kept raw."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    headers = _headers(message.headers())
    payload, raw_payload = _load_json(message.value() or b"")
    body = payload if isinstance(payload, dict) else {}

    try:
        # jsonb refuses \u0000 in strings: drop it from the history rather than fail the batch.
        raw_errors = (headers.get(Header.ERRORS) or "").replace("\\u0000", "")
        errors = orjson.loads(raw_errors) if raw_errors else []
    except orjson.JSONDecodeError:
        errors = []
    if not isinstance(errors, list):
        errors = []
    errors = errors[-MAX_ERRORS_KEPT:]
    last = errors[-1] if errors and isinstance(errors[-1], dict) else {}

    ts_type, ts_ms = message.timestamp()
    dead_lettered_at = (
        datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
        if ts_type != TIMESTAMP_NOT_AVAILABLE and ts_ms and ts_ms > 0
        else (now or (lambda: datetime.now(tz=UTC)))()
    )
    error_times = [t for t in (_epoch(e.get("at")) for e in errors if isinstance(e, dict)) if t is not None]
    first_failed_at = min(error_times, default=dead_lettered_at)

    if channel == DeadLetterSource.EVENTS:
        event = body
        recipient = _text(event.get("recipient"), _MAX["recipient"])
        if event.get("id"):
            message_id = f"{event['id']}:{recipient}" if recipient else str(event["id"])
        else:
            message_id = headers.get(Header.IDEMPOTENCY_KEY) or _raw_id(topic, partition, offset)
    else:
        event = body.get("event") if isinstance(body.get("event"), dict) else body  # render errors wrap it
        recipient = _text(_recipient(body) or _recipient(event), _MAX["recipient"])
        message_id = (
            headers.get(Header.IDEMPOTENCY_KEY) or str(body.get("id") or "") or _raw_id(topic, partition, offset)
        )

    return DeadLetterEntry(
        message_id=_bounded_id(message_id),
        channel=channel,
        dlq_topic=topic,
        dlq_partition=partition,
        dlq_offset=offset,
        first_failed_at=first_failed_at,
        last_failed_at=max(dead_lettered_at, first_failed_at),
        provider=_text(headers.get(Header.PROVIDER) or last.get("provider"), _MAX["provider"]),
        recipient=recipient,
        user_id=_int(body.get("user_id") if body.get("user_id") is not None else event.get("recipient")),
        event_id=_text(body.get("event_id") or event.get("id"), _MAX["event_id"]),
        event_type=_text(body.get("type") or event.get("type"), _MAX["event_type"]),
        origin_topic=_text(headers.get(Header.ORIGIN_TOPIC), _MAX["topic"]),
        message_key=_text(message.key(), _MAX["key"]),
        payload=payload,
        raw_payload=raw_payload,
        # The error history is stored once, parsed, in `errors` (not twice: it is the bulk of a row).
        headers={k: v for k, v in headers.items() if k != Header.ERRORS},
        error_class=_text(headers.get(Header.ERROR_CLASS), _MAX["class"]),
        cause_class=_text(last.get("error_class"), _MAX["class"]),
        error_code=_text(last.get("code"), _MAX["code"]),
        error_status=_int(last.get("status")),
        error_message=_text(headers.get(Header.ERROR) or last.get("message"), MAX_ERROR_MESSAGE),
        errors=errors,
        attempts=max(_int(headers.get(Header.ATTEMPT)) or 0, 0),
    )


# --- the handler --------------------------------------------------------------------------------
class DlqTriageHandler:
    """The triage consumer's `BatchHandler`. Per polled batch: parse every message (never failing on one:
    what cannot be read is stored raw), categorise, store the batch in one statement (idempotent by
    message id), page on-call for new unknown fingerprints (`pager`, a `paging.Pager`), and return;
    the runner commits the offsets only then, so a crash before redelivers a batch that stores
    nothing twice."""

    def __init__(
        self,
        *,
        pager,
        rules: RuleBook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pager = pager
        self.rules = rules or RuleBook()
        self.clock = clock
        self.topics = dlq_topics()
        self._last_sweep = float("-inf")
        self._last_gauge = float("-inf")

    def channel_of(self, topic: str) -> str:
        channel = self.topics.get(topic)
        if channel is None:  # a topic of another prefix (a renamed prefix): read it from the name
            parts = topic.rsplit(".", 2)
            channel = parts[-2] if len(parts) == 3 and parts[-1] == "dlq" else DeadLetterSource.EVENTS
            if channel not in DeadLetterSource.values:
                channel = DeadLetterSource.EVENTS
        return channel

    def handle_batch(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        entries = [parse_dead_letter(m, self.channel_of(m.topic())) for m in messages]
        categorise_entries(entries, self.rules.rules())
        stored = store_dead_letters(entries=entries)
        by_category = Tally((s.channel, s.category) for s in stored)
        for (channel, category), n in by_category.items():
            STORED.labels(channel, category).inc(n)
        duplicates = len(messages) - len(stored)
        if duplicates:
            DUPLICATES.inc(duplicates)
        pages = None
        if any(s.category == DeadLetterCategory.UNKNOWN for s in stored):
            pages = page_unknown_dead_letters(pager=self.pager)
        log.info(
            "dlq batch stored",
            extra={
                "messages": len(messages),
                "stored": len(stored),
                "reopened": sum(1 for s in stored if not s.inserted),
                "duplicates": duplicates,
                "categories": dict(Tally(s.category for s in stored)),
                "paged": pages.paged if pages else 0,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    def tick(self) -> None:
        """Between polls: page what a crash left pending, refresh the open-entries gauge."""
        now = self.clock()
        if now - self._last_sweep >= PAGE_SWEEP_INTERVAL:
            self._last_sweep = now
            page_unknown_dead_letters(pager=self.pager)
        if now - self._last_gauge >= OPEN_GAUGE_INTERVAL:
            self._last_gauge = now
            counts = dict(
                DeadLetter.objects.filter(status=DeadLetterStatus.OPEN)
                .values_list("category")
                .annotate(n=Count("id"))
                .order_by()
            )
            for category in DeadLetterCategory.values:
                OPEN_ENTRIES.labels(category).set(counts.get(category, 0))


def build_triage_runner(*, batch_size: int | None = None, group: str | None = None, pager=None) -> ConsumerRunner:
    from notifications.bus.consumers import consumer
    from notifications.dlq.paging import pager_from_settings

    handler = DlqTriageHandler(pager=pager or pager_from_settings())
    return ConsumerRunner(
        consumer("dlq-triage").runner_config(group=group, batch_size=batch_size or 1000),
        handler,
    )


__all__ = ["DlqTriageHandler", "build_triage_runner", "dlq_topics", "parse_dead_letter"]
