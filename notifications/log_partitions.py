"""Daily partitions of the delivery log: created ahead, dropped after the retention. Why, in
`docs/architecture.md`, "Delivery log"."""

import datetime as dt
import logging
import re
from dataclasses import dataclass, field

from django.conf import settings
from django.db import OperationalError, connection, transaction

from notifications.models import DeliveryLog, utc_today

log = logging.getLogger(__name__)

#: Advisory lock (two ints) held by one maintenance run at a time; the others skip.
MAINTENANCE_LOCK = (7310, 1)
#: Dropping a partition needs an exclusive lock on the whole table for an instant; if a long query
#: holds the table, give up (the next run retries) rather than queue every writer behind the DROP.
LOCK_TIMEOUT = "2s"

_BOUND = re.compile(r"FROM \((?:MINVALUE|'(?P<lo>[\d-]+)')\) TO \('(?P<hi>[\d-]+)'\)")


@dataclass
class PartitionChanges:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    #: Why nothing was done: "locked" (another run holds the lock) or "lock_timeout".
    skipped: str = ""


def table() -> str:
    return DeliveryLog._meta.db_table


def partition_name(day: dt.date) -> str:
    return f"{table()}_p{day:%Y%m%d}"


def writable_days(today: dt.date, retention: int | None = None) -> tuple[dt.date, dt.date]:
    """The days a row may be written to: today - retention (not dropped before tomorrow) to
    tomorrow (clock skew between the app and the database; created ahead anyway)."""
    retention = settings.DELIVERY_LOG_RETENTION_DAYS if retention is None else retention
    return today - dt.timedelta(days=retention), today + dt.timedelta(days=1)


def partitions(cursor) -> dict[str, tuple[dt.date | None, dt.date]]:
    """{name: (from day or None for MINVALUE, to day exclusive)} of the table's partitions."""
    cursor.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        [table()],
    )
    found = {}
    for name, bound in cursor.fetchall():
        match = _BOUND.search(bound or "")
        if match is None:  # a DEFAULT partition: never created here, never dropped by age
            continue
        lo = dt.date.fromisoformat(match["lo"]) if match["lo"] else None
        found[name] = (lo, dt.date.fromisoformat(match["hi"]))
    return found


def create_partition_sql(day: dt.date) -> str:
    return (
        f"CREATE TABLE {partition_name(day)} PARTITION OF {table()} "
        f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + dt.timedelta(days=1)).isoformat()}')"
    )


def maintain_partitions(
    *, today: dt.date | None = None, ahead: int | None = None, retention: int | None = None
) -> PartitionChanges:
    """Make every writable day have a partition: create the daily partitions from today - `retention`
    to today + `ahead` that no partition covers, and drop every partition whose days all lie before
    today - `retention`. One run at a time."""
    today = today or utc_today()
    ahead = settings.DELIVERY_LOG_PARTITIONS_AHEAD if ahead is None else ahead
    oldest_kept, _ = writable_days(today, retention)
    changes = PartitionChanges()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", list(MAINTENANCE_LOCK))
            if not cursor.fetchone()[0]:
                changes.skipped = "locked"
                return changes
            cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            existing = partitions(cursor)
            for offset in range((today - oldest_kept).days + ahead + 1):
                day = oldest_kept + dt.timedelta(days=offset)
                if not any((lo is None or lo <= day) and day < hi for lo, hi in existing.values()):
                    cursor.execute(create_partition_sql(day))
                    changes.created.append(partition_name(day))
            for name, (_lo, hi) in sorted(existing.items()):
                if hi <= oldest_kept:
                    cursor.execute(f"DROP TABLE {name}")
                    changes.dropped.append(name)
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        log.warning("delivery-log partition maintenance gave up on a lock; the next run retries")
        return PartitionChanges(skipped="lock_timeout")
    if changes.created or changes.dropped:
        log.info(
            "delivery-log partitions maintained",
            extra={"partitions_created": changes.created, "partitions_dropped": changes.dropped},
        )
    return changes
