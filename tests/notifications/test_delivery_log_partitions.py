"""The delivery log's daily partitions on real PostgreSQL: where rows land, redelivery across days,
maintenance (ahead, retention, one run at a time), the admin, and the migration there and back."""

import datetime as dt
import threading
import uuid

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from prometheus_client import REGISTRY

from notifications.delivery_log import LogEntry, log_day, record_delivery_outcomes, record_dispatch_outcomes
from notifications.log_partitions import (
    MAINTENANCE_LOCK,
    create_partition_sql,
    maintain_partitions,
    partition_name,
    partitions,
)
from notifications.models import DeliveryLog, utc_today
from notifications.outbox.relay import conninfo_from_django
from notifications.table_maintenance import MaintenanceLoop

pytestmark = pytest.mark.django_db(transaction=True)

TODAY = utc_today()


def days_ago(n: int) -> dt.date:
    return TODAY - dt.timedelta(days=n)


def rows_of(event_id: str) -> list[tuple[str, str, dt.date, str]]:
    """(channel, status, created_day, the partition holding the row) of an event's rows."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT channel, status, created_day, tableoid::regclass::text FROM notifications_deliverylog "
            "WHERE event_id = %s ORDER BY channel, created_day",
            [event_id],
        )
        return cursor.fetchall()


def partition_names() -> set[str]:
    with connection.cursor() as cursor:
        return set(partitions(cursor))


def test_log_day_is_the_utc_day_of_a_timestamp():
    assert log_day("2026-11-30T23:59:59.5+00:00") == "2026-11-30"
    assert log_day("2026-11-30T23:30:00-02:00") == "2026-12-01"
    assert log_day("2026-11-30T10:00:00Z") == "2026-11-30"
    assert log_day(None) is None and log_day("not a time") is None and log_day(20261130) is None
    assert log_day("garbage+00:00") is None, "a producer's odd value never reaches the ::date cast"


def test_rows_land_in_the_partition_of_their_event_day():
    event = str(uuid.uuid4())
    record_dispatch_outcomes(
        [
            (event, 1, "email", "t", "queued", "", days_ago(3).isoformat()),
            (event, 1, "sms", "t", "suppressed", "opted_out", None),  # no day: today
        ]
    )
    assert rows_of(event) == [
        ("email", "queued", days_ago(3), partition_name(days_ago(3))),
        ("sms", "suppressed", TODAY, partition_name(TODAY)),
    ]


def test_a_worker_outcome_the_day_after_the_dispatch_updates_the_same_row():
    """The event was accepted and dispatched yesterday; the send (a retry, say) happens today. Both
    writers take the day from the event, so the upsert finds yesterday's row."""
    event, yesterday = str(uuid.uuid4()), days_ago(1).isoformat()
    record_dispatch_outcomes([(event, 7, "email", "t", "queued", "", yesterday)])
    record_delivery_outcomes([LogEntry(event, 7, "email", "t", "retrying", attempts=1, day=yesterday)])
    record_delivery_outcomes([LogEntry(event, 7, "email", "t", "sent", provider="sendgrid", attempts=2, day=yesterday)])
    record_dispatch_outcomes([(event, 7, "email", "t", "queued", "", yesterday)])  # the event redelivered
    assert rows_of(event) == [("email", "sent", days_ago(1), partition_name(days_ago(1)))]
    row = DeliveryLog.objects.get(event_id=event)
    assert (row.provider, row.attempts) == ("sendgrid", 2)


def test_days_outside_the_kept_range_are_logged_on_its_edges(settings):
    settings.DELIVERY_LOG_RETENTION_DAYS = 30
    old, future = str(uuid.uuid4()), str(uuid.uuid4())
    record_dispatch_outcomes([(old, 1, "email", "t", "queued", "", days_ago(400).isoformat())])
    record_delivery_outcomes(
        [LogEntry(future, 1, "email", "t", "sent", day=(TODAY + dt.timedelta(days=90)).isoformat())]
    )
    assert rows_of(old)[0][2] == days_ago(30), "a replay older than the retention: the oldest day kept"
    assert rows_of(future)[0][2] == TODAY + dt.timedelta(days=1), "a clock ahead: tomorrow at most"


def test_maintenance_creates_the_days_ahead(settings):
    settings.DELIVERY_LOG_PARTITIONS_AHEAD = 7
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {partition_name(TODAY + dt.timedelta(days=7))}")
    changes = maintain_partitions(ahead=10)
    wanted = {partition_name(TODAY + dt.timedelta(days=n)) for n in range(11)}
    assert wanted <= partition_names()
    assert sorted(changes.created) == sorted(partition_name(TODAY + dt.timedelta(days=n)) for n in (7, 8, 9, 10))
    assert maintain_partitions(ahead=10).created == [], "a second run finds nothing to do"


def test_maintenance_drops_the_days_past_the_retention_with_their_rows(settings):
    settings.DELIVERY_LOG_RETENTION_DAYS = 30
    with connection.cursor() as cursor:
        for n in (31, 45):
            cursor.execute(create_partition_sql(days_ago(n)))
            cursor.execute(
                "INSERT INTO notifications_deliverylog (event_id, user_id, channel, type, status, reason, provider, "
                "provider_message_id, attempts, created_at, updated_at, created_day) "
                "VALUES (%s, 1, 'email', 't', 'sent', '', '', '', 1, now(), now(), %s)",
                [str(uuid.uuid4()), days_ago(n)],
            )
    kept = str(uuid.uuid4())
    record_dispatch_outcomes([(kept, 1, "email", "t", "queued", "", days_ago(30).isoformat())])

    changes = maintain_partitions()

    assert sorted(changes.dropped) == sorted([partition_name(days_ago(45)), partition_name(days_ago(31))])
    names = partition_names()
    assert partition_name(days_ago(31)) not in names and partition_name(days_ago(45)) not in names
    assert partition_name(days_ago(30)) in names and rows_of(kept), "the last day of the retention stays"
    assert not DeliveryLog.objects.filter(created_day__lt=days_ago(30)).exists()


def test_the_command_runs_the_maintenance():
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {partition_name(TODAY + dt.timedelta(days=2))}")
    call_command("maintain_delivery_log")
    assert partition_name(TODAY + dt.timedelta(days=2)) in partition_names()


def test_a_second_maintenance_run_skips_while_one_holds_the_lock():
    with psycopg.connect(conninfo_from_django()) as other, other.transaction():
        other.execute("SELECT pg_advisory_xact_lock(%s, %s)", MAINTENANCE_LOCK)
        assert maintain_partitions().skipped == "locked"


def test_maintenance_gives_up_rather_than_queue_writers_behind_a_long_query(settings):
    """Dropping a partition needs the whole table for an instant; a long reader holds it, so the
    run gives up after the lock timeout (the next run retries) instead of blocking the writers."""
    settings.DELIVERY_LOG_RETENTION_DAYS = 30
    with connection.cursor() as cursor:
        cursor.execute(create_partition_sql(days_ago(40)))
    reading = threading.Event()
    release = threading.Event()

    def long_reader() -> None:
        with psycopg.connect(conninfo_from_django()) as other, other.transaction():
            other.execute("SELECT count(*) FROM notifications_deliverylog").fetchone()
            reading.set()
            release.wait(30)

    reader = threading.Thread(target=long_reader)
    reader.start()
    try:
        assert reading.wait(10)
        changes = maintain_partitions()
    finally:
        release.set()
        reader.join(30)
    assert changes.skipped == "lock_timeout" and changes.dropped == []
    assert partition_name(days_ago(40)) in partition_names(), "rolled back, dropped by the next run"
    assert maintain_partitions().dropped == [partition_name(days_ago(40))]


def test_a_table_in_the_way_of_a_partition_is_counted_by_the_loop_and_raised_by_the_command(settings):
    """The dispatcher's hourly run must not stop dispatching over it (a week of partitions ahead
    leaves time to fix it); the command says it out loud."""
    settings.DELIVERY_LOG_PARTITIONS_AHEAD = 8
    in_the_way = partition_name(TODAY + dt.timedelta(days=8))
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {in_the_way}")
        cursor.execute(f"CREATE TABLE {in_the_way} (x int)")
    failures = ("table_maintenance_failures_total", {"table": "delivery_log"})
    before = REGISTRY.get_sample_value(*failures) or 0
    try:
        assert MaintenanceLoop().tick() is None
        assert REGISTRY.get_sample_value(*failures) == before + 1
        with pytest.raises(CommandError, match=r"^delivery_log: .*already exists"):
            call_command("maintain_delivery_log")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {in_the_way}")


def test_admin_changelist_and_change_view_show_partitioned_rows(admin_client):
    event = str(uuid.uuid4())
    record_dispatch_outcomes([(event, 42, "email", "order.shipped", "queued", "", days_ago(2).isoformat())])
    record_dispatch_outcomes([(event, 42, "sms", "order.shipped", "queued", "", None)])
    row = DeliveryLog.objects.get(event_id=event, channel="email")
    other = DeliveryLog.objects.get(event_id=event, channel="sms")

    page = admin_client.get("/admin/notifications/deliverylog/", {"q": event})
    assert page.status_code == 200
    links = {f"/admin/notifications/deliverylog/{r.pk}/change/" for r in (row, other)}
    assert all(link in page.content.decode() for link in links), "both days' rows are listed"

    detail = admin_client.get(f"/admin/notifications/deliverylog/{row.pk}/change/")
    assert detail.status_code == 200 and event in detail.content.decode() and "order.shipped" in detail.content.decode()

    day = admin_client.get(
        "/admin/notifications/deliverylog/",
        {"created_at__year": TODAY.year, "created_at__month": TODAY.month, "created_at__day": TODAY.day},
    )
    assert day.status_code == 200


def test_the_migration_copies_the_rows_into_day_partitions_and_back(settings):
    settings.DELIVERY_LOG_RETENTION_DAYS = 30
    call_command("migrate", "notifications", "0010", verbosity=0)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'notifications_deliverylog'")
            assert cursor.fetchone()[0] == "r", "unpartitioned before"
            for n, event in ((2, "a"), (40, "b")):
                cursor.execute(
                    "INSERT INTO notifications_deliverylog (event_id, user_id, channel, type, status, reason, "
                    "provider, provider_message_id, attempts, created_at, updated_at) "
                    "VALUES (%s, 1, 'email', 't', 'sent', '', '', '', 1, now() - %s * interval '1 day', now())",
                    [uuid.uuid5(uuid.NAMESPACE_DNS, event), n],
                )
            cursor.execute("SELECT max(id) FROM notifications_deliverylog")
            highest = cursor.fetchone()[0]
        call_command("migrate", "notifications", "0011", verbosity=0)

        recent, old = str(uuid.uuid5(uuid.NAMESPACE_DNS, "a")), str(uuid.uuid5(uuid.NAMESPACE_DNS, "b"))
        assert rows_of(recent) == [("email", "sent", days_ago(2), partition_name(days_ago(2)))]
        assert rows_of(old)[0][3] == "notifications_deliverylog_before"
        record_dispatch_outcomes([(str(uuid.uuid4()), 1, "email", "t", "queued", "", None)])
        assert DeliveryLog.objects.order_by("-id").first().id == highest + 1, "ids carry on"
        assert maintain_partitions().dropped == ["notifications_deliverylog_before"]

        call_command("migrate", "notifications", "0010", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute("SELECT relkind FROM pg_class WHERE relname = 'notifications_deliverylog'")
            assert cursor.fetchone()[0] == "r"
            cursor.execute("SELECT count(*) FROM notifications_deliverylog WHERE event_id = %s", [recent])
            assert cursor.fetchone()[0] == 1
    finally:
        call_command("migrate", "notifications", verbosity=0)
