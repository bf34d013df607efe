"""Messages held for later (quiet hours): stored in PostgreSQL, screened again and moved to the outbox when due.

Holding them in a table rather than a Kafka topic means a message deferred for eight hours
never blocks a partition or bounces through retry tiers; moving due rows into the outbox in one
transaction keeps the at-least-once chain intact (the relay takes it from there).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction

from notifications.delivery_log import record_delivery_outcomes
from notifications.dispatch.release import ReleaseScreen
from notifications.models import ScheduledMessage


@dataclass(frozen=True, slots=True)
class Deferred:
    due_at: datetime
    topic: str
    key: str
    payload: dict
    headers: dict


def schedule_messages(items: Iterable[Deferred]) -> int:
    rows = [
        ScheduledMessage(due_at=i.due_at, topic=i.topic, key=i.key, payload=i.payload, headers=i.headers) for i in items
    ]
    ScheduledMessage.objects.bulk_create(rows, batch_size=2000)
    return len(rows)


def release_due_messages(*, limit: int = 5000, screen: ReleaseScreen | None = None) -> int:
    """Take up to `limit` due messages off the schedule, screen them again (`ReleaseScreen`: an
    opt-out meanwhile suppresses, a kill switch parks or drops) and put the rest into the outbox,
    in one transaction with their delivery-log rows; returns how many were taken off."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            """
            DELETE FROM notifications_scheduledmessage
            WHERE id IN (SELECT id FROM notifications_scheduledmessage WHERE due_at <= now()
                         ORDER BY due_at, id LIMIT %s FOR UPDATE SKIP LOCKED)
            RETURNING topic, key, payload::text, headers::text
            """,
            [limit],
        )
        rows = cursor.fetchall()
        if not rows:
            return 0
        from notifications.outbox.services import insert_outbox_rows

        released, entries = (screen or ReleaseScreen()).screen(rows)
        insert_outbox_rows(released)
        record_delivery_outcomes(entries)
    return len(rows)
