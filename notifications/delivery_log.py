"""Writing the delivery log in batches: one row per (event, user, channel), never one write per message."""

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from django.db import connection
from django.utils import timezone

from notifications.log_partitions import writable_days
from notifications.models import DeliveryLog, DeliveryStatus


def log_day(timestamp: str | None) -> str | None:
    """The UTC day (ISO date) of an ISO 8601 timestamp: a row's partition (`created_day`). None when
    missing or unreadable: the row then gets today."""
    if not timestamp or not isinstance(timestamp, str):
        return None
    try:
        if timestamp.endswith(("+00:00", "Z")):  # what the platform writes: the date is the day
            return dt.date.fromisoformat(timestamp[:10]).isoformat()
        moment = dt.datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.date().isoformat()
    return moment.astimezone(dt.UTC).date().isoformat()


def _day_params(now: dt.datetime) -> dict[str, dt.date]:
    oldest, newest = writable_days(now.date())
    return {"today": now.date(), "oldest_day": oldest, "newest_day": newest}


#: A row's `created_day`: its day (None: today), kept within the days that have partitions (a
#: message older than the retention, say a late replay, is logged on the oldest day kept).
_CREATED_DAY = "LEAST(GREATEST(COALESCE({day}, %(today)s), %(oldest_day)s), %(newest_day)s)"


@dataclass(frozen=True, slots=True)
class LogEntry:
    event_id: str
    user_id: int
    channel: str
    type: str
    status: str
    reason: str = ""
    provider: str = ""
    provider_message_id: str = ""
    attempts: int = 0
    #: The UTC day the event was accepted (ISO date), the row's partition; see :func:`log_day`.
    day: str | None = None


#: One dispatcher decision as a plain tuple: (event_id, user_id, channel, type, status, reason, day).
#: The dispatcher makes several per event; a tuple costs a fraction of a frozen ``LogEntry``.
DispatchRow = tuple[str, int, str, str, str, str, str | None]


def record_dispatch_outcomes(entries: Iterable[LogEntry | DispatchRow]) -> int:
    """The dispatcher's decisions (``LogEntry`` objects or :data:`DispatchRow` tuples). The first
    decision wins: a redelivered event never overwrites a row a worker has already moved on (say
    from queued to sent). The conflict target includes the partition key, `created_day`, which
    comes from the event (its acceptance day), so a redelivery finds the row it wrote before.

    The whole batch travels as one JSON parameter, an array of row arrays unpacked by
    ``jsonb_array_elements``: building thousands of model instances (or a VALUES list with a
    placeholder per field) cost the dispatcher more CPU than everything else it does per event, and
    arrays are smaller than objects (no key names per row) and cheaper for PostgreSQL to unpack than
    ``jsonb_to_recordset``."""
    rows = [e if type(e) is tuple else _dispatch_row(e) for e in entries]
    if not rows:
        return 0
    table = DeliveryLog._meta.db_table
    sql = f"""
        INSERT INTO {table} (event_id, user_id, channel, type, status, reason, provider,
                             provider_message_id, attempts, created_at, updated_at, created_day)
        SELECT (r->>0)::uuid, (r->>1)::bigint, r->>2, r->>3, r->>4, left(r->>5, 200), '', '', 0,
               %(now)s, %(now)s, {_CREATED_DAY.format(day="(r->>6)::date")}
        FROM jsonb_array_elements(%(rows)s::jsonb) AS r
        ON CONFLICT (event_id, user_id, channel, created_day) DO NOTHING
    """  # noqa: S608 - only the table name is interpolated; values are parameters
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(sql, {"rows": orjson.dumps(rows).decode(), "now": now, **_day_params(now)})
    return len(rows)


def _dispatch_row(e: LogEntry) -> DispatchRow:
    return (e.event_id, e.user_id, e.channel, e.type, e.status, e.reason, e.day)


#: A later status may replace an earlier one only in this order (sent is final). A worker's or a
#: quiet-hours release's `suppressed` (a kill switch, an opt-out meanwhile) and `parked` follow a
#: `scheduled`, `queued` or `retrying`; parking and retrying may alternate.
_RANK = {
    DeliveryStatus.SCHEDULED: 1,
    DeliveryStatus.QUEUED: 2,
    DeliveryStatus.PARKED: 3,
    DeliveryStatus.RETRYING: 3,
    DeliveryStatus.SUPPRESSED: 4,
    DeliveryStatus.FAILED: 4,
    DeliveryStatus.DLQ: 5,
    DeliveryStatus.SENT: 6,
}


def record_delivery_outcomes(entries: Iterable[LogEntry]) -> int:
    """The workers' outcomes: upsert, but never move a row backwards (a late retry report does not
    turn `sent` into `retrying`). One statement per batch, the rows in one JSON parameter unpacked
    by ``jsonb_to_recordset`` (a VALUES list with 11 placeholders per row cost the worker more CPU
    in psycopg's query splitting than the rest of the write)."""
    latest: dict[tuple[str, int, str], LogEntry] = {}
    for e in entries:  # one row per key per statement (ON CONFLICT cannot touch a row twice)
        key = (e.event_id, e.user_id, e.channel)
        if key not in latest or _RANK[e.status] >= _RANK[latest[key].status]:
            latest[key] = e
    entries = list(latest.values())
    if not entries:
        return 0
    table = DeliveryLog._meta.db_table
    rank_case = "CASE t.status " + " ".join(f"WHEN '{s}' THEN {r}" for s, r in _RANK.items()) + " END"
    sql = f"""
        INSERT INTO {table} AS t (event_id, user_id, channel, type, status, reason, provider,
                                  provider_message_id, attempts, created_at, updated_at, created_day)
        SELECT v.event_id, v.user_id, v.channel, v.type, v.status, left(v.reason, 200), v.provider,
               left(v.provider_message_id, 200), v.attempts, %(now)s, %(now)s, {_CREATED_DAY.format(day="v.day")}
        FROM jsonb_to_recordset(%(rows)s::jsonb)
             AS v(event_id uuid, user_id bigint, channel text, type text, status text, reason text,
                  provider text, provider_message_id text, attempts smallint, day date)
        ON CONFLICT (event_id, user_id, channel, created_day) DO UPDATE SET
            status = EXCLUDED.status, reason = EXCLUDED.reason,
            provider = COALESCE(NULLIF(EXCLUDED.provider, ''), t.provider),
            provider_message_id = COALESCE(NULLIF(EXCLUDED.provider_message_id, ''), t.provider_message_id),
            attempts = GREATEST(t.attempts, EXCLUDED.attempts), updated_at = EXCLUDED.updated_at
        WHERE {rank_case} <= {rank_case.replace("t.status", "EXCLUDED.status")}
    """  # noqa: S608 - only constants are interpolated; values are parameters
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(sql, {"rows": orjson.dumps(entries).decode(), "now": now, **_day_params(now)})
    return len(entries)
