"""Retention of the tables that grow with traffic, on real PostgreSQL: expired rows go in bounded
batches, newer ones and open dead letters stay, the ingest stays idempotent within its window, and
the one maintenance (command and loop) is harmless to repeat."""

import datetime as dt
import uuid
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone
from prometheus_client import REGISTRY

from campaigns.models import Campaign, CampaignCopy, CampaignKind, CampaignState
from notifications.dlq.models import DeadLetter, DeadLetterStatus
from notifications.models import AcceptedEvent, OutboxEvent
from notifications.retention import POLICIES
from notifications.table_maintenance import TABLES, MaintenanceLoop
from preferences.models import InboxMessage

pytestmark = pytest.mark.django_db

URL = "/api/v1/events"
NOW = timezone.now()
POLICY = {policy.name: policy for policy in POLICIES}


def days_ago(n: float) -> dt.datetime:
    return NOW - dt.timedelta(days=n)


def maintain(*tables: str, **options) -> list[str]:
    """Run `maintain_tables` (on `tables`, default all) and return its lines."""
    out = StringIO()
    call_command("maintain_tables", *[f"--table={t}" for t in tables], stdout=out, **options)
    return out.getvalue().splitlines()


def accepted_events(count: int, *, age_days: float) -> None:
    AcceptedEvent.objects.bulk_create(
        AcceptedEvent(
            id=uuid.uuid4(),
            service="s",
            producer_event_id=str(uuid.uuid4()),
            type="t",
            recipient_count=1,
            accepted_at=days_ago(age_days),
        )
        for _ in range(count)
    )


def post_event(client, event_id: str) -> dict:
    body = {"event_id": event_id, "type": "order.shipped", "recipients": ["42"], "data": {}}
    response = client.post(URL, body, format="json")
    assert response.status_code == 202
    return response.json()


def dead_letter(n: int, *, status: str, changed: dt.datetime) -> DeadLetter:
    return DeadLetter.objects.create(
        message_id=f"m-{n}",
        channel="sms",
        dlq_topic="notif.sms.dlq",
        dlq_partition=0,
        dlq_offset=n,
        first_failed_at=changed,
        last_failed_at=changed,
        fingerprint="f",
        status=status,
        updated_at=changed,
    )


def fanout(notification_type, *, state: str, changed: dt.datetime, launch_id: uuid.UUID | None = None) -> Campaign:
    campaign = Campaign.objects.create(
        kind=CampaignKind.FANOUT,
        name="fanout",
        notification_type=notification_type,
        state=state,
        state_changed_at=changed,
        launch_id=launch_id or uuid.uuid4(),
    )
    CampaignCopy.objects.create(campaign=campaign, channel="email", body="hi")
    return campaign


# --- accepted events: the ingest's idempotency window ---------------------------------------------
def test_a_repeat_within_the_window_is_a_duplicate_and_after_it_a_new_event(
    settings, notification_type, service_client
):
    settings.ACCEPTED_EVENT_RETENTION_DAYS = 30
    recent = post_event(service_client, "order-1-shipped")
    old = post_event(service_client, "order-2-shipped")
    AcceptedEvent.objects.filter(id=recent["id"]).update(accepted_at=days_ago(29.9))
    AcceptedEvent.objects.filter(id=old["id"]).update(accepted_at=days_ago(30.1))
    OutboxEvent.objects.all().delete()  # relayed

    assert maintain("accepted_events") == ["accepted_events: deleted 1 rows in 1 batches"]

    again = post_event(service_client, "order-1-shipped")
    assert again["duplicate"] is True and again["id"] == recent["id"]
    assert not OutboxEvent.objects.exists(), "a duplicate within the window queues nothing"
    later = post_event(service_client, "order-2-shipped")
    assert later["duplicate"] is False, "past the window the event id is accepted as a new event"
    assert OutboxEvent.objects.count() == 1


def test_a_fanout_event_is_remembered_while_its_run_is_kept(settings, notification_type):
    settings.ACCEPTED_EVENT_RETENTION_DAYS = 7
    settings.FANOUT_RETENTION_DAYS = 30
    event = AcceptedEvent.objects.create(
        id=uuid.uuid4(), service="s", producer_event_id="e", type="t", recipient_count=0, accepted_at=days_ago(20)
    )
    fanout(notification_type, state=CampaignState.COMPLETED, changed=days_ago(20), launch_id=event.id)
    maintain()
    assert AcceptedEvent.objects.filter(id=event.id).exists(), "its run's launch id is the event's id"

    settings.FANOUT_RETENTION_DAYS = 10
    assert maintain("fanouts", "accepted_events") == [
        "fanouts: deleted 1 rows in 1 batches",
        "accepted_events: deleted 1 rows in 1 batches",
    ]


# --- fanout runs ---------------------------------------------------------------------------------
def test_finished_fanouts_go_after_the_retention_and_everything_else_stays(settings, notification_type):
    settings.FANOUT_RETENTION_DAYS = 30
    gone = fanout(notification_type, state=CampaignState.CANCELLED, changed=days_ago(31))
    kept = [
        fanout(notification_type, state=CampaignState.COMPLETED, changed=days_ago(29)),
        fanout(notification_type, state=CampaignState.PAUSED, changed=days_ago(90)),  # not finished
        Campaign.objects.create(
            name="marketing",
            notification_type=notification_type,
            state=CampaignState.COMPLETED,
            state_changed_at=days_ago(90),
        ),
    ]
    maintain("fanouts")
    assert set(Campaign.objects.values_list("pk", flat=True)) == {c.pk for c in kept}
    assert not CampaignCopy.objects.filter(campaign_id=gone.pk).exists(), "its copy went with it"


# --- dead letters --------------------------------------------------------------------------------
def test_resolved_dead_letters_go_after_the_retention_and_open_ones_never(settings):
    settings.DLQ_RESOLVED_RETENTION_DAYS = 30
    dead_letter(1, status=DeadLetterStatus.OPEN, changed=days_ago(400))
    dead_letter(2, status=DeadLetterStatus.REPLAYED, changed=days_ago(31))
    dead_letter(3, status=DeadLetterStatus.DISCARDED, changed=days_ago(31))
    dead_letter(4, status=DeadLetterStatus.DISCARDED, changed=days_ago(29))
    assert maintain("dead_letters") == ["dead_letters: deleted 2 rows in 1 batches"]
    assert sorted(DeadLetter.objects.values_list("message_id", flat=True)) == ["m-1", "m-4"]


# --- in-app inbox --------------------------------------------------------------------------------
def test_inbox_messages_go_after_the_retention(settings, django_user_model):
    settings.INBOX_RETENTION_DAYS = 90
    user = django_user_model.objects.create(username="u")
    for n, age in enumerate((91, 89, 1)):
        InboxMessage.objects.create(
            user=user, notification_id=f"n-{n}", type_key="t", category="product", created_at=days_ago(age)
        )
    maintain("inbox_messages")
    assert sorted(InboxMessage.objects.values_list("notification_id", flat=True)) == ["n-1", "n-2"]


def test_a_retention_of_zero_keeps_rows_for_good(settings, django_user_model):
    settings.INBOX_RETENTION_DAYS = 0
    user = django_user_model.objects.create(username="u")
    InboxMessage.objects.create(
        user=user, notification_id="n", type_key="t", category="product", created_at=days_ago(999)
    )
    assert maintain("inbox_messages") == ["inbox_messages: skipped (kept for good)"]
    assert InboxMessage.objects.exists()


# --- the maintenance itself ----------------------------------------------------------------------
def test_a_big_delete_runs_in_bounded_batches(settings):
    settings.ACCEPTED_EVENT_RETENTION_DAYS = 1
    accepted_events(25, age_days=2)
    assert list(POLICY["accepted_events"].delete_batches(batch=10)) == [10, 10, 5]
    assert not AcceptedEvent.objects.exists()


def test_running_the_maintenance_twice_is_harmless(settings):
    settings.DLQ_RESOLVED_RETENTION_DAYS = 30
    dead_letter(1, status=DeadLetterStatus.REPLAYED, changed=days_ago(31))
    dead_letter(2, status=DeadLetterStatus.OPEN, changed=days_ago(31))
    first = maintain()
    assert "dead_letters: deleted 1 rows in 1 batches" in first
    second = maintain()
    assert second == [f"{name}: nothing to do" for name in TABLES]
    assert list(DeadLetter.objects.values_list("message_id", flat=True)) == ["m-2"]


def test_the_old_command_name_maintains_the_delivery_log_only():
    out = StringIO()
    call_command("maintain_delivery_log", stdout=out)
    assert out.getvalue().splitlines() == ["delivery_log: nothing to do"]


def test_retention_days_on_the_command_needs_one_table():
    with pytest.raises(CommandError, match="exactly one --table"):
        maintain(retention_days=3)


def test_the_loop_runs_one_bounded_step_per_tick_and_a_pass_per_interval(settings):
    settings.ACCEPTED_EVENT_RETENTION_DAYS = 1
    accepted_events(5, age_days=2)
    clock = [0.0]
    loop = MaintenanceLoop(interval=3600, clock=lambda: clock[0])
    steps = [loop.tick() for _ in range(3 * len(TABLES))]
    done = [step for step in steps if step is not None]
    assert [step.table for step in done] == list(TABLES), "one step each (every table fits one batch here)"
    assert [step.deleted for step in done if step.table == "accepted_events"] == [5]
    assert loop.tick() is None, "the pass is over; the next one is due in an hour"

    accepted_events(1, age_days=2)
    clock[0] = 3600.0
    later = [loop.tick() for _ in range(3 * len(TABLES))]
    assert [s.deleted for s in later if s is not None and s.table == "accepted_events"] == [1]


def test_a_refused_step_is_counted_by_the_loop_and_fails_the_command_in_one_line(settings):
    settings.ACCEPTED_EVENT_RETENTION_DAYS = 1
    accepted_events(1, age_days=2)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'deletes refused here'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse_delete BEFORE DELETE ON notifications_acceptedevent "
            "FOR EACH ROW EXECUTE FUNCTION refuse_delete()"
        )
    sample = ("table_maintenance_failures_total", {"table": "accepted_events"})
    before = REGISTRY.get_sample_value(*sample) or 0
    loop = MaintenanceLoop(interval=3600, clock=lambda: 0.0)
    steps = [loop.tick() for _ in range(3 * len(TABLES))]
    assert REGISTRY.get_sample_value(*sample) == before + 1
    assert "inbox_messages" in [s.table for s in steps if s is not None], "the tables after it are maintained"

    with pytest.raises(CommandError) as raised:
        maintain()
    assert str(raised.value) == "accepted_events: deletes refused here"
    assert AcceptedEvent.objects.exists()


def test_the_admin_lists_what_the_maintenance_kept(settings, admin_client, notification_type):
    settings.DLQ_RESOLVED_RETENTION_DAYS = 30
    kept = dead_letter(1, status=DeadLetterStatus.DISCARDED, changed=days_ago(29))
    gone = dead_letter(2, status=DeadLetterStatus.DISCARDED, changed=days_ago(31))
    accepted_events(2, age_days=1)
    maintain()
    page = admin_client.get("/admin/dlq/deadletter/", {"status__exact": "discarded"})
    assert page.status_code == 200 and f"/admin/dlq/deadletter/{kept.pk}/change/" in page.content.decode()
    assert f"/admin/dlq/deadletter/{gone.pk}/change/" not in page.content.decode()
    for changelist in ("notifications/acceptedevent", "preferences/inboxmessage", "campaigns/campaign"):
        assert admin_client.get(f"/admin/{changelist}/").status_code == 200, changelist


@pytest.mark.django_db(transaction=True)
def test_the_index_migrations_apply_to_tables_with_rows(django_user_model):
    previous = {"dlq": "0001", "preferences": "0003", "campaigns": "0003"}
    for app, migration in previous.items():
        call_command("migrate", app, migration, verbosity=0)
    try:
        dead_letter(1, status=DeadLetterStatus.REPLAYED, changed=days_ago(31))
        user = django_user_model.objects.create(username="u")
        InboxMessage.objects.create(user=user, notification_id="n", type_key="t", category="product")
        call_command("migrate", verbosity=0)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname FROM pg_indexes WHERE indexname IN "
                "('deadletter_resolved', 'inbox_created', 'campaign_fanout_changed') ORDER BY 1"
            )
            assert [name for (name,) in cursor.fetchall()] == [
                "campaign_fanout_changed",
                "deadletter_resolved",
                "inbox_created",
            ]
        assert DeadLetter.objects.count() == 1 and InboxMessage.objects.count() == 1
    finally:
        call_command("migrate", verbosity=0)
