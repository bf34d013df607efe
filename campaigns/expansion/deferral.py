"""Campaign recipients inside their quiet hours: deferred as batches of their own, scheduled until
their windows end, and their delivery-log rows settled when a deferred batch suppresses them."""

from __future__ import annotations

import datetime as dt

import orjson
from django.db import connection
from django.utils import timezone

from campaigns.expansion.building import BatchMessage, deferred_batch_message
from notifications.bus.topics import channel_topic
from notifications.dispatch.messages import Header
from notifications.dispatch.scheduling import Deferred, schedule_messages
from notifications.models import DeliveryLog, DeliveryStatus


def due_minute(moment: dt.datetime) -> dt.datetime:
    """Quiet hours' end rounded up to the minute: recipients whose windows end within the same minute
    share one deferred batch, and none is released before its window ends."""
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + dt.timedelta(minutes=1)


def schedule_deferred_batches(
    batch: BatchMessage, waiting: dict[dt.datetime, list[int]], *, start: int, now: dt.datetime
) -> list[tuple[str, list[int]]]:
    """Schedule one quiet-hours batch per due time, a ``ScheduledMessage`` on ``notif.<channel>.batch``
    that the dispatcher's tick releases when due; returns [(batch id, user ids)]. The ids are
    deterministic, so a chunk expanded again after a crash schedules the same batches again."""
    if not waiting:
        return []
    out: list[tuple[str, list[int]]] = []
    items: list[Deferred] = []
    for due, user_ids in sorted(waiting.items()):
        ident, payload = deferred_batch_message(batch, user_ids, start=start, due=due, now=now)
        items.append(
            Deferred(
                due,
                channel_topic(batch.channel, "batch"),
                f"{batch.launch_id}:{ident}",
                payload,
                {Header.IDEMPOTENCY_KEY: f"{batch.launch_id}:{batch.channel}:{ident}"},
            )
        )
        out.append((ident, user_ids))
    schedule_messages(items)
    return out


def settle_scheduled_logs(launch_id: str, channel: str, suppressed: dict[int, str]) -> int:
    """Turn the ``scheduled`` (quiet hours) delivery-log rows of these recipients into ``suppressed``
    with their reason: one statement. Rows already moved on are left alone."""
    if not suppressed:
        return 0
    table = DeliveryLog._meta.db_table
    rows = [{"user_id": user_id, "reason": reason[:200]} for user_id, reason in suppressed.items()]
    sql = f"""
        UPDATE {table} AS t SET status = %(suppressed)s, reason = v.reason, updated_at = %(now)s
        FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(user_id bigint, reason text)
        WHERE t.event_id = %(event)s AND t.channel = %(channel)s AND t.user_id = v.user_id
          AND t.status = %(scheduled)s
    """  # noqa: S608 - only the table name is interpolated; values are parameters
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {
                "rows": orjson.dumps(rows).decode(),
                "now": timezone.now(),
                "event": launch_id,
                "channel": channel,
                "suppressed": DeliveryStatus.SUPPRESSED,
                "scheduled": DeliveryStatus.SCHEDULED,
            },
        )
        return cursor.rowcount
