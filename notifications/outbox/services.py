"""Writing to the outbox. Everything here runs inside the caller's transaction.

A row becomes visible to the relay only when the surrounding transaction commits, so a rolled-back
transaction publishes nothing, and a committed one is published even if the process dies now.
"""

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from notifications.bus.topics import events_topic, lane_of_topic
from notifications.models import AcceptedEvent, OutboxEvent, bucket_for_key
from notifications.outbox.envelope import build_event_envelope, platform_event_id
from notifications.outbox.relay import BULK_LANE, PRIORITY_LANE
from notifications.priority import Lane, lane_for, type_priority


@dataclass(frozen=True)
class OutboxMessage:
    """One Kafka message to be relayed: `topic` is the full topic name."""

    topic: str
    key: str
    payload: dict[str, Any]
    headers: dict[str, str] | None = None


#: The outbox's `lane` column of each lane (what `relay_outbox --lane` serves).
LANE_COLUMN = {Lane.PRIORITY: PRIORITY_LANE, Lane.BULK: BULK_LANE}


def outbox_lane(topic: str) -> int:
    """The outbox row's `lane` column: the bulk lane's for a bulk-lane topic, else the priority lane's."""
    return LANE_COLUMN[Lane.BULK if lane_of_topic(topic) is Lane.BULK else Lane.PRIORITY]


def enqueue_messages(messages: Iterable[OutboxMessage]) -> int:
    """Insert outbox rows for `messages` in one statement; returns how many were written."""
    return insert_outbox_rows(
        [(m.topic, m.key, orjson.dumps(m.payload).decode(), orjson.dumps(m.headers or {}).decode()) for m in messages]
    )


def insert_outbox_rows(rows: Sequence[tuple[str, str, str, str]]) -> int:
    """(topic, key, payload JSON, headers JSON) rows in one COPY (a multi-row INSERT with array
    parameters costs several times as much for JSON text; the NOTIFY trigger fires for COPY too)."""
    if not rows:
        return 0
    now = timezone.now()
    buckets = settings.OUTBOX_BUCKETS
    lanes: dict[str, int] = {}
    with (
        connection.cursor() as cursor,
        cursor.copy(
            f"COPY {OutboxEvent._meta.db_table} (topic, key, bucket, lane, payload, headers, created_at)"
            " FROM STDIN (FORMAT BINARY)"  # the JSON text as it is: no escaping on either side
        ) as copy,
    ):
        copy.set_types(_OUTBOX_COPY_TYPES)
        for topic, key, payload, headers in rows:
            lane = lanes.get(topic)
            if lane is None:
                lane = lanes[topic] = outbox_lane(topic)
            copy.write_row((topic, key, bucket_for_key(key, buckets), lane, payload, headers, now))
    return len(rows)


_OUTBOX_COPY_TYPES = ("varchar", "varchar", "int2", "int2", "text", "text", "timestamptz")


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
    #: Recipient objects sent with the event (``preferences.identify.RecipientData``), upserted with it.
    inline: Sequence[Any] = ()
    #: Instead of recipients, a fanout target (``{"topic": key}`` or ``{"audience": predicate}``, ``exclude``).
    target: dict[str, Any] | None = None


@dataclass
class PreparedEvent:
    """An event with its platform id and outbox rows, ready to be stored (by `store_events`)."""

    service: str
    producer_event_id: str
    id: uuid.UUID
    type: str
    recipient_count: int
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)  # outbox rows, see insert_outbox_rows
    inline: Sequence[Any] = ()  # recipient objects to upsert in the event's transaction
    fanout: Any = None  # a fanout event's ``campaigns.fanout.FanoutTarget`` and data (no rows then)
    data: dict[str, Any] = field(default_factory=dict)
    lane: Lane = Lane.PRIORITY  # the events lane of its type; the ingest commits the lanes apart


def prepare_events(events: Sequence[EventInput], *, service: str, now: datetime) -> list[PreparedEvent]:
    """Ids, envelopes and outbox rows of `events` (no database work but the type's lane, cached).
    What all recipients of an event share is worked out once per event."""
    prepared = []
    now_iso = now.isoformat()
    topics = {lane: events_topic(lane) for lane in Lane}
    for event in events:
        producer_event_id = event.event_id or str(uuid.uuid4())
        pid = platform_event_id(service=service, producer_event_id=producer_event_id)
        lane = lane_for(type_priority(event.type))
        topic = topics[lane]
        envelope = build_event_envelope(
            event_id=pid,
            type=event.type,
            occurred_at=event.occurred_at or now_iso,
            recipient="",
            data=event.data,
            source=service,
            producer_event_id=producer_event_id,
            accepted_at=now_iso,
        )
        if event.target is not None:
            prepared.append(_prepare_fanout(event, service=service, producer_event_id=producer_event_id, pid=pid))
            prepared[-1].lane = lane
            continue
        headers = {"idempotency-key": "", "event-type": event.type}
        rows = []
        for recipient in event.recipients:
            envelope["recipient"] = recipient
            headers["idempotency-key"] = f"{envelope['id']}:{recipient}"
            rows.append((topic, recipient, orjson.dumps(envelope).decode(), orjson.dumps(headers).decode()))
        prepared.append(
            PreparedEvent(
                service, producer_event_id, pid, event.type, len(event.recipients), rows, event.inline, lane=lane
            )
        )
    return prepared


def _prepare_fanout(event: EventInput, *, service: str, producer_event_id: str, pid: uuid.UUID) -> PreparedEvent:
    """A fanout event: no outbox row per recipient; :func:`store_events` creates its fanout run."""
    from campaigns.fanout import FanoutTarget

    target = event.target or {}
    fanout = FanoutTarget(
        topic=target.get("topic"), audience=target.get("audience"), exclude=tuple(target.get("exclude") or ())
    )
    return PreparedEvent(service, producer_event_id, pid, event.type, 0, fanout=fanout, data=dict(event.data))


def store_events(prepared: Sequence[PreparedEvent], *, now: datetime) -> list[PublishResult]:
    """Record each event once and write the outbox rows of the new ones (inside the caller's
    transaction), upserting the recipient objects they carry. A repeat of an accepted (service,
    event_id) — earlier, or earlier in `prepared` — writes nothing (its recipient objects neither)
    and returns the original acceptance with `duplicate`."""
    inserted = _insert_accepted(prepared, now=now)
    originals = {}
    if len(inserted) < len(prepared):
        originals = dict(
            AcceptedEvent.objects.filter(id__in=[p.id for p in prepared if p.id not in inserted]).values_list(
                "id", "accepted_at"
            )
        )
    rows: list[tuple[str, str, str, str]] = []
    results: list[PublishResult] = []
    first_seen: set[uuid.UUID] = set()
    inline: list[Any] = []
    fanouts: list[PreparedEvent] = []
    for event in prepared:
        fresh = event.id in inserted and event.id not in first_seen
        first_seen.add(event.id)
        if fresh:
            rows += event.rows
            inline += event.inline
            if event.fanout is not None:
                fanouts.append(event)
        results.append(
            PublishResult(
                id=event.id,
                producer_event_id=event.producer_event_id,
                accepted_at=now if event.id in inserted else originals[event.id],
                duplicate=not fresh,
            )
        )
    if inline:
        _upsert_inline_recipients(inline)
    insert_outbox_rows(rows)
    if fanouts:
        _create_fanouts(fanouts, now=now)
    return results


def _create_fanouts(events: Sequence[PreparedEvent], *, now: datetime) -> None:
    """The fanout runs of the new fanout events (``campaigns.fanout``), in the caller's transaction."""
    from campaigns.fanout import fanout_create

    for event in events:
        fanout_create(
            event_id=event.id,
            producer_event_id=event.producer_event_id,
            service=event.service,
            type_key=event.type,
            target=event.fanout,
            data=event.data,
            now=now,
        )


def _upsert_inline_recipients(inline: Sequence[Any]) -> None:
    """The recipient objects of the new events, one upsert per id (later objects win field by field)."""
    from preferences.identify import recipients_upsert
    from preferences.recipient_serializers import merge_recipient_data

    merged: dict[str, Any] = {}
    for recipient in inline:
        known = merged.get(recipient.external_id)
        merged[recipient.external_id] = recipient if known is None else merge_recipient_data(known, recipient)
    recipients_upsert(list(merged.values()))


def publish_event(
    *,
    type: str,
    recipients: Sequence[str | int],
    data: dict[str, Any] | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    service: str = "internal",
) -> PublishResult:
    """Publish one event to `recipients` (their external ids; a user without one by its id).
    Idempotent by (`service`, `event_id`). A malformed recipient id raises ValueError."""
    from preferences.models import EXTERNAL_ID

    names = [str(r) for r in recipients]
    for name in names:
        if EXTERNAL_ID.fullmatch(name) is None:
            raise ValueError(f"recipients: {name!r} is not a recipient id (1 to 255 characters, no spaces, '/?#')")
    [result] = publish_events(
        events=[
            EventInput(
                type=type,
                recipients=names,
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
    acceptance, so producers can retry safely.
    """
    now = timezone.now()
    prepared = prepare_events(events, service=service, now=now)
    with transaction.atomic():
        return store_events(prepared, now=now)


def _insert_accepted(prepared: Sequence[PreparedEvent], *, now: datetime) -> set[uuid.UUID]:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id: the ids that are new, race-free."""
    unique = {p.id: p for p in prepared}
    if not unique:
        return set()
    events = list(unique.values())
    connection.ensure_connection()
    # Server-side binding with binary arrays: Django's cursor binds on the client, quoting every
    # element of every array into the query text (about half the ingest's cost of this statement).
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(
            f"INSERT INTO {AcceptedEvent._meta.db_table} "  # noqa: S608
            "(id, service, producer_event_id, type, recipient_count, accepted_at) "
            "SELECT i, s, p, t, n, %b FROM unnest(%b::uuid[], %b::varchar[], %b::varchar[], %b::varchar[], "
            "%b::integer[]) AS r(i, s, p, t, n) ON CONFLICT (id) DO NOTHING RETURNING id",
            [
                now,
                [e.id for e in events],
                [e.service for e in events],
                [e.producer_event_id for e in events],
                [e.type for e in events],
                [e.recipient_count for e in events],
            ],
        )
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
