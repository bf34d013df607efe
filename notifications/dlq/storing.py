"""Storing dead letters: the parsed entry, categorised by the rules, stored in one statement per batch."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from django.db import connection, transaction
from django.utils import timezone

from notifications.dispatch.messages import Header
from notifications.dlq.models import DeadLetter, DeadLetterCategory, DeadLetterStatus
from notifications.dlq.rules import CompiledRule, TriageFacts, categorise, fingerprint

#: A replayed entry is reopened by a new dead letter of the same message that failed after the
#: replay. Worker clocks and the database clock may differ a little; this much earlier still counts.
REOPEN_CLOCK_TOLERANCE_SECONDS = 30


@dataclass
class DeadLetterEntry:
    """A DLQ message, parsed and ready to store (see `triage.parse_dead_letter`)."""

    message_id: str
    channel: str
    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    first_failed_at: datetime
    last_failed_at: datetime
    provider: str = ""
    recipient: str = ""
    user_id: int | None = None
    event_id: str = ""
    event_type: str = ""
    origin_topic: str = ""
    message_key: str = ""
    payload: Any = None
    raw_payload: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    error_class: str = ""
    cause_class: str = ""
    error_code: str = ""
    error_status: int | None = None
    error_message: str = ""
    errors: list[Any] = field(default_factory=list)
    attempts: int = 0
    category: str = DeadLetterCategory.UNKNOWN
    rule_id: int | None = None
    fingerprint: str = ""

    def facts(self) -> TriageFacts:
        return TriageFacts(
            channel=self.channel,
            provider=self.provider,
            error_class=self.error_class,
            cause_class=self.cause_class,
            code=self.error_code,
            status=self.error_status,
            message=self.error_message,
        )


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    id: int
    message_id: str
    channel: str
    category: str
    fingerprint: str
    inserted: bool  # False: an existing replayed row was reopened by a new failure


def categorise_entries(entries: Iterable[DeadLetterEntry], rules: Sequence[CompiledRule]) -> None:
    """Set category, matching rule and fingerprint on each entry (in place)."""
    for entry in entries:
        facts = entry.facts()
        entry.category, rule = categorise(facts, rules)
        entry.rule_id = rule.id if rule is not None else None
        entry.fingerprint = fingerprint(facts)


_RECORD_COLUMNS = (
    ("message_id", "text"),
    ("channel", "text"),
    ("provider", "text"),
    ("recipient", "text"),
    ("user_id", "bigint"),
    ("event_id", "text"),
    ("event_type", "text"),
    ("dlq_topic", "text"),
    ("dlq_partition", "integer"),
    ("dlq_offset", "bigint"),
    ("origin_topic", "text"),
    ("message_key", "text"),
    ("payload", "jsonb"),
    ("raw_payload", "text"),
    ("headers", "jsonb"),
    ("error_class", "text"),
    ("cause_class", "text"),
    ("error_code", "text"),
    ("error_message", "text"),
    ("errors", "jsonb"),
    ("attempts", "integer"),
    ("first_failed_at", "timestamptz"),
    ("last_failed_at", "timestamptz"),
    ("category", "text"),
    ("rule_id", "bigint"),
    ("fingerprint", "text"),
    ("page_pending", "boolean"),
)
#: Columns a new failure of a replayed message overwrites when it reopens the row.
_REOPEN_COLUMNS = (
    "provider", "dlq_topic", "dlq_partition", "dlq_offset", "origin_topic", "headers", "error_class",
    "cause_class", "error_code", "error_message", "errors", "attempts", "last_failed_at", "category",
    "rule_id", "fingerprint", "page_pending",
)  # fmt: skip


def _store_sql() -> str:
    table = DeadLetter._meta.db_table
    names = [name for name, _ in _RECORD_COLUMNS]
    record = ", ".join(f"{name} {kind}" for name, kind in _RECORD_COLUMNS)
    reopen = ", ".join(f"{name} = EXCLUDED.{name}" for name in _REOPEN_COLUMNS)
    return f"""
        INSERT INTO {table} AS d ({", ".join(names)}, status, failure_count, replay_count,
                                  discarded_reason, stored_at, updated_at)
        SELECT {", ".join(f"r.{n}" for n in names)}, %(status)s, 1, 0, '', %(now)s, %(now)s
        FROM jsonb_to_recordset(%(rows)s::jsonb) AS r({record})
        -- Skip, before the insert, what certainly changes nothing (a redelivery): a row that
        -- reaches ON CONFLICT DO UPDATE is locked even when the WHERE below is false, and that
        -- lock is a heap write plus WAL per row. A concurrent insert still ends in ON CONFLICT.
        WHERE NOT EXISTS (
            SELECT 1 FROM {table} AS e
            WHERE e.message_id = r.message_id
              AND (e.status <> %(replayed)s
                   OR (e.dlq_topic, e.dlq_partition, e.dlq_offset) = (r.dlq_topic, r.dlq_partition, r.dlq_offset))
        )
        ON CONFLICT (message_id) DO UPDATE SET {reopen},
            first_failed_at = LEAST(d.first_failed_at, EXCLUDED.first_failed_at),
            status = %(status)s, failure_count = d.failure_count + 1, updated_at = EXCLUDED.updated_at
        WHERE d.status = %(replayed)s
          AND (d.dlq_topic, d.dlq_partition, d.dlq_offset)
              IS DISTINCT FROM (EXCLUDED.dlq_topic, EXCLUDED.dlq_partition, EXCLUDED.dlq_offset)
          AND (EXCLUDED.headers ? %(replay_header)s
               OR EXCLUDED.last_failed_at > d.replayed_at - make_interval(secs => %(tolerance)s))
        RETURNING d.id, d.message_id, d.channel, d.category, d.fingerprint, (d.xmax = 0) AS inserted
    """  # noqa: S608 - only the table and column names (constants) are interpolated


def store_dead_letters(*, entries: Sequence[DeadLetterEntry]) -> list[StoredDeadLetter]:
    """Store entries with one `INSERT … ON CONFLICT` statement; returns the rows that are new (or
    reopened). Re-storing the same DLQ message never changes or duplicates a row; a new dead
    letter of a message that was replayed (it failed again) reopens its row.

    Entries must be categorised first (`categorise_entries`). Unknown ones are stored with
    `page_pending`, so a crash between storing and paging never loses the page.
    """
    latest: dict[str, DeadLetterEntry] = {}
    for entry in entries:  # ON CONFLICT cannot touch one row twice in a statement: keep the latest
        latest[entry.message_id] = entry
    if not latest:
        return []
    rows = []
    for e in latest.values():
        rows.append(
            {
                "message_id": e.message_id,
                "channel": e.channel,
                "provider": e.provider,
                "recipient": e.recipient,
                "user_id": e.user_id,
                "event_id": e.event_id,
                "event_type": e.event_type,
                "dlq_topic": e.dlq_topic,
                "dlq_partition": e.dlq_partition,
                "dlq_offset": e.dlq_offset,
                "origin_topic": e.origin_topic,
                "message_key": e.message_key,
                "payload": e.payload,
                "raw_payload": e.raw_payload,
                "headers": e.headers,
                "error_class": e.error_class,
                "cause_class": e.cause_class,
                "error_code": e.error_code,
                "error_message": e.error_message,
                "errors": e.errors,
                "attempts": e.attempts,
                "first_failed_at": e.first_failed_at,
                "last_failed_at": e.last_failed_at,
                "category": e.category,
                "rule_id": e.rule_id,
                "fingerprint": e.fingerprint or fingerprint(e.facts()),
                "page_pending": e.category == DeadLetterCategory.UNKNOWN,
            }
        )
    params = {
        "rows": orjson.dumps(rows).decode(),
        "now": timezone.now(),
        "status": DeadLetterStatus.OPEN,
        "replayed": DeadLetterStatus.REPLAYED,
        "replay_header": Header.REPLAY,
        "tolerance": REOPEN_CLOCK_TOLERANCE_SECONDS,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_store_sql(), params)
        return [StoredDeadLetter(*row) for row in cursor.fetchall()]
