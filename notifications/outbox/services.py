"""Writing to the outbox. Everything here runs inside the caller's transaction.

A row becomes visible to the relay only when the surrounding transaction commits, so a rolled-back
transaction publishes nothing, and a committed one is published even if the process dies now.
"""

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from django.db import connection, transaction
from django.utils import timezone

from notifications.bus.topics import events_topic, lane_of_topic
from notifications.models import AcceptedEvent, OutboxEvent, bucket_for_key
from notifications.outbox.envelope import build_event_envelope, platform_event_id
from notifications.priority import Lane, lane_for, type_priority


@dataclass(frozen=True)
class OutboxMessage:
    """One Kafka message to be relayed: `topic` is the full topic name."""

    topic: str
    key: str
    payload: dict[str, Any]
    headers: dict[str, str] | None = None


def enqueue_messages(messages: Iterable[OutboxMessage]) -> int:
    """Insert outbox rows for `messages` in one statement; returns how many were written."""
    rows = [
        OutboxEvent(
            topic=m.topic,
            key=m.key,
            bucket=bucket_for_key(m.key),
            lane=outbox_lane(m.topic),
            payload=orjson.dumps(m.payload).decode(),
            headers=orjson.dumps(m.headers or {}).decode(),
        )
        for m in messages
    ]
    OutboxEvent.objects.bulk_create(rows, batch_size=5000)
    return len(rows)


def outbox_lane(topic: str) -> int:
    """The outbox row's `lane` column: 1 for a bulk-lane topic (claimed after every priority row)."""
    return 1 if lane_of_topic(topic) is Lane.BULK else 0


@dataclass(frozen=True)
class PublishResult:
    id: uuid.UUID
    producer_event_id: str
    accepted_at: datetime
    duplicate: bool


@dataclass(frozen=True)
class EventInput:
    type: str
    recipients: Sequence[str]
    data: dict[str, Any]
    event_id: str | None = None
    occurred_at: datetime | None = None


def publish_event(
    *,
    type: str,
    recipients: Sequence[str | int],
    data: dict[str, Any] | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    service: str = "internal",
) -> PublishResult:
    """Publish one event to `recipients` (user ids). Idempotent by (`service`, `event_id`)."""
    [result] = publish_events(
        events=[
            EventInput(
                type=type,
                recipients=[str(r) for r in recipients],
                data=data or {},
                event_id=event_id,
                occurred_at=occurred_at,
            )
        ],
        service=service,
    )
    return result


def publish_events(*, events: Sequence[EventInput], service: str) -> list[PublishResult]:
    """Accept a batch of events atomically: record each once, and write one outbox row per recipient.

    A repeat of an already accepted (service, event_id) writes nothing and returns the original
    acceptance, so producers can retry a POST safely.
    """
    now = timezone.now()
    prepared = []
    for event in events:
        producer_event_id = event.event_id or str(uuid.uuid4())
        pid = platform_event_id(service=service, producer_event_id=producer_event_id)
        prepared.append((event, producer_event_id, pid))

    with transaction.atomic():
        inserted = _insert_accepted(prepared, service=service, now=now)
        originals = {
            a.id: a.accepted_at
            for a in AcceptedEvent.objects.filter(id__in=[pid for _, _, pid in prepared if pid not in inserted])
        }
        messages = []
        seen: set[uuid.UUID] = set()
        for event, producer_event_id, pid in prepared:
            if pid not in inserted or pid in seen:  # a duplicate, or repeated inside this batch
                continue
            seen.add(pid)
            occurred_at = event.occurred_at or now
            topic = events_topic(lane_for(type_priority(event.type)))
            for recipient in event.recipients:
                envelope = build_event_envelope(
                    event_id=pid,
                    type=event.type,
                    occurred_at=occurred_at,
                    recipient=recipient,
                    data=event.data,
                    source=service,
                    producer_event_id=producer_event_id,
                )
                messages.append(
                    OutboxMessage(
                        topic=topic,
                        key=recipient,
                        payload=dict(envelope),
                        headers={"idempotency-key": f"{pid}:{recipient}", "event-type": event.type},
                    )
                )
        enqueue_messages(messages)

    results = []
    first_seen: set[uuid.UUID] = set()
    for _event, producer_event_id, pid in prepared:
        fresh = pid in inserted and pid not in first_seen
        first_seen.add(pid)
        results.append(
            PublishResult(
                id=pid,
                producer_event_id=producer_event_id,
                accepted_at=now if pid in inserted else originals[pid],
                duplicate=not fresh,
            )
        )
    return results


def _insert_accepted(prepared, *, service: str, now: datetime) -> set[uuid.UUID]:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id: the ids that are new, race-free."""
    unique = {pid: (event, producer_event_id) for event, producer_event_id, pid in prepared}
    if not unique:
        return set()
    table = AcceptedEvent._meta.db_table
    placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(unique))
    params: list[Any] = []
    for pid, (event, producer_event_id) in unique.items():
        params += [pid, service, producer_event_id, event.type, len(event.recipients), now]
    sql = (
        f"INSERT INTO {table} (id, service, producer_event_id, type, recipient_count, accepted_at) "  # noqa: S608
        f"VALUES {placeholders} ON CONFLICT (id) DO NOTHING RETURNING id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def requeue_outbox_failures(queryset) -> int:
    """Move refused rows back into the outbox (same topic, key, payload) and drop the failures."""
    with transaction.atomic():
        failures = list(queryset.select_for_update())
        enqueue_messages(
            OutboxMessage(topic=f.topic, key=f.key, payload=f.payload, headers=f.headers) for f in failures
        )
        queryset.model.objects.filter(pk__in=[f.pk for f in failures]).delete()
    return len(failures)
