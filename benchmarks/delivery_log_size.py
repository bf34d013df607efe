"""Delivery-log footprint: bytes per row of a daily partition, and the writers' rows/s (loopback only).

    .venv/bin/python benchmarks/delivery_log_size.py [--rows 200000] [--batch 5000]

Uses a scratch database of its own (`bench_deliverylog_<pid>` on the DATABASE_URL server, migrated,
dropped at the end), so no one else's rows are counted. Writes --rows delivery-log rows on one day
the way production does: the dispatcher's insert (`record_dispatch_outcomes`, status queued) and the
worker's upsert (`record_delivery_outcomes`, status sent, a provider message id), --batch rows per
statement. Then reports the day's partition: heap, indexes and total bytes per row (the upsert's
old row versions included, as autovacuum finds them), and rows/s of the two statements together.
Multiply by rows a day and by the retention to size the table (docs/operations.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import psycopg  # noqa: E402
from _common import code_version, log  # noqa: E402

DEFAULT_DATABASE_URL = "postgres://notif:notif@127.0.0.1:55432/notifications"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5_000)
    args = parser.parse_args()

    base = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    parts = urlsplit(base)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to run against a non-loopback database host: {parts.hostname}")
    name = f"bench_deliverylog_{os.getpid()}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{name}"))
    try:
        measure(args.rows, args.batch)
    finally:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def measure(rows: int, batch: int) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from notifications.delivery_log import LogEntry, record_delivery_outcomes, record_dispatch_outcomes
    from notifications.log_partitions import partition_name
    from notifications.models import utc_today

    log("migrating the scratch database")
    call_command("migrate", interactive=False, verbosity=0)
    today = utc_today()
    day = today.isoformat()
    log(f"writing {rows:,} rows (insert + upsert, {batch:,} per statement)")
    started = time.perf_counter()
    for offset in range(0, rows, batch):
        events = [(str(uuid.uuid4()), 1_000_000 + offset + i) for i in range(min(batch, rows - offset))]
        record_dispatch_outcomes([(e, u, "email", "order.shipped", "queued", "", day) for e, u in events])
        record_delivery_outcomes(
            [
                LogEntry(e, u, "email", "order.shipped", "sent", "", "sendgrid", uuid.uuid4().hex[:22], 1, day)
                for e, u in events
            ]
        )
    elapsed = time.perf_counter() - started
    partition = partition_name(today)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size(%s), pg_indexes_size(%s), pg_total_relation_size(%s)",
            [partition, partition, partition],
        )
        heap, indexes, total = cursor.fetchone()
    print(f"delivery-log footprint ({code_version()})")
    print(f"  rows                       {rows:>12,}")
    print(f"  heap bytes per row         {heap / rows:>12.0f}")
    print(f"  index bytes per row        {indexes / rows:>12.0f}")
    print(f"  total bytes per row        {total / rows:>12.0f}")
    print(f"  rows/s (insert + upsert)   {rows / elapsed:>12,.0f}")
    print(f"  command: .venv/bin/python benchmarks/delivery_log_size.py --rows {rows} --batch {batch}")


if __name__ == "__main__":
    main()
