"""The dispatcher against real Kafka, PostgreSQL and Redis: one event in, the right messages out."""

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer
from django.db import transaction
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from notifications.bus.config import producer_config
from notifications.bus.runner import ConsumerRunner, RunnerConfig
from notifications.bus.topics import channel_topic, delivery_topic, topic_name
from notifications.dispatch.dispatcher import Dispatcher
from notifications.dispatch.killswitch import KillSwitchBoard
from notifications.dispatch.scheduling import release_due_messages
from notifications.models import (
    ApiKey,
    Category,
    DeliveryLog,
    KillSwitch,
    NotificationTemplate,
    NotificationType,
    OutboxEvent,
    ScheduledMessage,
)
from notifications.outbox.relay import OutboxRelay, RelayConfig, conninfo_from_django
from notifications.priority import Lane
from notifications.redis_client import get_redis
from preferences.models import RecipientProfile
from tests.dispatch_helpers import dispatch, envelope, make_user, out, statuses
from tests.kafka_helpers import consume_matching

pytestmark = pytest.mark.django_db(transaction=True)


def test_event_becomes_one_rendered_message_per_channel(types, django_user_model, fresh_topic):
    user = make_user(django_user_model, locale="de-CH")
    event = envelope("order.shipped", user.id)
    dispatch(fresh_topic, [event])
    [email] = out("email", event["id"])
    assert email["id"] == f"{event['id']}:{user.id}:email" and email["to"] == {"email": user.email}
    assert email["content"]["subject"] == "Bestellung A-1 versandt", "de-CH falls back to the 'de' template"
    assert email["content"]["list_unsubscribe"].startswith("http")
    assert email["priority"] == "transactional"
    [push] = out("push", event["id"])
    assert push["id"] == f"{event['id']}:{user.id}:push:fcm" and push["to"]["platform"] == "fcm"
    assert push["to"]["devices"][0][0] == "fcm" and push["content"]["title"] == "Shipped"
    [sms] = out("sms", event["id"])
    assert sms["to"] == {"phone": "+4915112345678"} and sms["content"]["body"] == "Your order A-1 is on its way"
    [inapp] = out("inapp", event["id"])
    assert inapp["to"] == {"user_id": user.id}
    assert statuses(event["id"]) == {c: ("queued", "") for c in ("email", "push", "sms", "inapp")}


def test_log_rows_and_messages_take_the_day_the_event_was_accepted(types, django_user_model, fresh_topic):
    """Accepted two days ago, dispatched now: the rows land on the acceptance day, and the messages
    carry it to the workers, so every later write (a retry tomorrow, a redelivery) finds the row."""
    user = make_user(django_user_model, device=False, phone=None)
    accepted = datetime.now(UTC) - timedelta(days=2)
    event = {**envelope("order.shipped", user.id), "accepted_at": accepted.isoformat()}
    dispatch(fresh_topic, [event])
    [email] = out("email", event["id"])
    assert email["log_day"] == accepted.date().isoformat()
    days = dict(DeliveryLog.objects.filter(event_id=event["id"]).values_list("channel", "created_day"))
    assert days == {channel: accepted.date() for channel in ("email", "push", "sms", "inapp")}


def test_locale_without_variant_falls_back_to_default(types, django_user_model, fresh_topic):
    user = make_user(django_user_model, locale="fr-FR")
    event = envelope("order.shipped", user.id)
    dispatch(fresh_topic, [event])
    assert out("email", event["id"])[0]["content"]["subject"] == "Order A-1 shipped"


def test_opt_out_and_missing_contact_points_suppress(types, django_user_model, fresh_topic):
    user = make_user(
        django_user_model, phone=None, device=False, document={"categories": {"transactional": {"email": False}}}
    )
    event = envelope("order.shipped", user.id)
    dispatch(fresh_topic, [event])
    assert statuses(event["id"]) == {
        "email": ("suppressed", "opted_out"),
        "push": ("suppressed", "no_contact_point"),
        "sms": ("suppressed", "no_contact_point"),
        "inapp": ("queued", ""),
    }
    assert out("email", event["id"], expected=0) == []


def test_global_mute_suppresses_but_security_overrides(types, django_user_model, fresh_topic):
    user = make_user(django_user_model, document={"global_mute": True, "categories": {"security": {}}})
    muted = envelope("order.shipped", user.id)
    reset = envelope("auth.password_reset", user.id, data={"url": "https://x/r"})
    dispatch(fresh_topic, [muted, reset])
    assert {s for s, _ in statuses(muted["id"]).values()} == {"suppressed"}
    assert statuses(muted["id"])["email"] == ("suppressed", "global_mute")
    [email] = out("email", reset["id"])
    assert email["content"]["body"] == "https://x/r" and "list_unsubscribe" not in email["content"]


def test_explicit_opt_in_adds_a_channel(types, django_user_model, fresh_topic):
    user = make_user(django_user_model, document={"categories": {"marketing": {"sms": True, "push": False}}})
    event = envelope("marketing.digest", user.id)
    dispatch(fresh_topic, [event])
    log = statuses(event["id"])
    assert log["push"] == ("suppressed", "opted_out") and log["email"] == ("queued", "")
    assert log["sms"][0] == "dlq" and "no sms template" in log["sms"][1], "opted in, but the type has no SMS copy"


def test_quiet_hours_defer_non_urgent_until_the_window_ends(types, django_user_model, fresh_topic):
    now = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)  # 00:30 in Berlin
    quiet = {"quiet_hours": {"enabled": True, "start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}}
    user = make_user(django_user_model, document=quiet)
    normal = envelope("order.shipped", user.id)
    urgent = envelope("auth.password_reset", user.id)
    dispatch(fresh_topic, [normal, urgent], clock=lambda: now)
    assert statuses(normal["id"])["email"] == ("scheduled", "quiet_hours")
    assert len(out("email", urgent["id"])) == 1, "urgent messages ignore quiet hours"
    held = ScheduledMessage.objects.filter(payload__event_id=normal["id"])
    assert held.count() == 4
    assert {m.due_at for m in held} == {datetime(2026, 11, 26, 6, 0, tzinfo=UTC)}  # 07:00 Berlin
    # When due, they move to the outbox (and from there to the channel topics).
    held.update(due_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert release_due_messages() == 4
    assert OutboxEvent.objects.filter(payload__contains=normal["id"]).count() == 4
    assert ScheduledMessage.objects.count() == 0


def test_a_quiet_hours_message_is_not_sent_to_a_user_who_opted_out_meanwhile(types, django_user_model, fresh_topic):
    from preferences.services import preferences_opt_out_category

    now = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)  # 00:30 in Berlin
    quiet = {"quiet_hours": {"enabled": True, "start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}}
    user = make_user(django_user_model, document=quiet)
    event = envelope("order.shipped", user.id)
    dispatch(fresh_topic, [event], clock=lambda: now)
    assert statuses(event["id"])["email"] == ("scheduled", "quiet_hours")
    preferences_opt_out_category(user=user, category="transactional")

    ScheduledMessage.objects.update(due_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert release_due_messages() == 4, "every held message is taken off the schedule"
    assert not OutboxEvent.objects.filter(payload__contains=event["id"]).exists(), "none goes out"
    assert set(statuses(event["id"]).values()) == {("suppressed", "opted_out")}


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [("pause", ("parked", "kill_switch_pause")), ("drop_non_urgent", ("suppressed", "kill_switch"))],
)
def test_a_kill_switch_pulled_during_quiet_hours_applies_at_release(
    types, django_user_model, fresh_topic, mode, outcome
):
    now = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
    quiet = {"quiet_hours": {"enabled": True, "start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}}
    user = make_user(django_user_model, document=quiet)
    event = envelope("order.shipped", user.id)
    dispatch(fresh_topic, [event], clock=lambda: now)
    KillSwitch.objects.create(channel="email", mode=mode)

    ScheduledMessage.objects.update(due_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert release_due_messages() == 4
    log = statuses(event["id"])
    assert log["email"] == outcome and log["sms"] == ("scheduled", "quiet_hours"), "the switch is on e-mail only"
    topics = set(OutboxEvent.objects.filter(payload__contains=event["id"]).values_list("topic", flat=True))
    expected = {delivery_topic(channel) for channel in ("push", "sms", "inapp")}
    assert topics == (expected | {channel_topic("email", "delayed")} if mode == "pause" else expected)


def test_frequency_cap(types, django_user_model, fresh_topic):
    caps = {"frequency_caps": {"marketing": {"push": {"max": 2, "per": "day"}}}}
    user = make_user(django_user_model, document=caps)
    events = [envelope("marketing.digest", user.id) for _ in range(3)]
    dispatch(fresh_topic, events)
    push = [statuses(e["id"])["push"] for e in events]
    assert push == [("queued", ""), ("queued", ""), ("suppressed", "frequency_cap")]
    assert all(statuses(e["id"])["email"] == ("queued", "") for e in events), "the cap is per channel"


@pytest.mark.parametrize(
    ("mode", "normal_outcome", "urgent_outcome"),
    [
        ("normal", ("queued", ""), ("queued", "")),
        ("delay", ("parked", "kill_switch_delay"), ("queued", "")),
        ("drop_non_urgent", ("suppressed", "kill_switch"), ("queued", "")),
        ("pause", ("parked", "kill_switch_pause"), ("parked", "kill_switch_pause")),
    ],
)
def test_kill_switch_modes(types, django_user_model, fresh_topic, mode, normal_outcome, urgent_outcome):
    KillSwitch.objects.create(channel="email", mode=mode)
    user = make_user(django_user_model)
    normal = envelope("order.shipped", user.id)
    urgent = envelope("auth.password_reset", user.id)
    dispatch(fresh_topic, [normal, urgent])
    assert statuses(normal["id"])["email"] == normal_outcome
    assert statuses(urgent["id"])["email"] == urgent_outcome
    if normal_outcome[0] == "parked":
        assert len(out("email", normal["id"], suffix="delayed")) == 1
        assert out("email", normal["id"], expected=0) == []
    assert statuses(normal["id"])["push"] == ("queued", ""), "a switch on email leaves push alone"


@pytest.mark.parametrize("mode", ["delay", "drop_non_urgent"])
def test_a_security_message_passes_delay_and_drop_as_the_workers_decide(types, django_user_model, fresh_topic, mode):
    """Urgent for a kill switch is the urgent class (`kill_switch_urgent`), as in the workers: a
    security type of normal urgency is not parked at dispatch only to be sent by a worker later."""
    alert = NotificationType.objects.create(
        key="auth.new_login", name="New login", category=Category.SECURITY, default_channels=["email"]
    )
    NotificationTemplate.objects.create(notification_type=alert, channel="email", subject="New login", body="Hi")
    KillSwitch.objects.create(channel="email", mode=mode)
    event = envelope("auth.new_login", make_user(django_user_model).id)
    dispatch(fresh_topic, [event])
    assert statuses(event["id"])["email"] == ("queued", "")
    assert len(out("email", event["id"])) == 1


def test_kill_switch_change_is_seen_without_restart():
    now = [0.0]
    board = KillSwitchBoard(clock=lambda: now[0])
    assert board.channel_mode("sms") == "normal"
    KillSwitch.objects.create(channel="sms", mode="pause")
    assert board.channel_mode("sms") == "normal"  # cached…
    now[0] += 2.0
    assert board.channel_mode("sms") == "pause"  # …for at most 2 s, well inside the 5 s promise


def test_poison_messages_go_to_the_events_dlq_and_do_not_block(types, django_user_model, fresh_topic):
    user = make_user(django_user_model)
    good = envelope("order.shipped", user.id)
    unknown = envelope("no.such.type", user.id)
    marker = uuid.uuid4().hex
    dispatch(fresh_topic, [b"{not json " + marker.encode(), unknown, good])
    dlq = consume_matching(
        topic_name("events.dlq"),
        lambda m: marker.encode() in (m.value() or b"") or unknown["id"].encode() in (m.value() or b""),
        expected=2,
    )
    classes = sorted(dict(m.headers())["error-class"].decode() for m in dlq)
    assert classes == ["invalid_json", "unknown_type"]
    assert len(out("email", good["id"])) == 1


def test_a_message_too_large_for_kafka_is_dead_lettered_and_the_rest_of_the_batch_goes_out(
    types, django_user_model, fresh_topic
):
    """An event under Kafka's limit whose data is rendered into an e-mail's subject, text and HTML exceeds
    it: the message is dead-lettered with the reason, and the batch goes on."""
    user = make_user(django_user_model, device=False, phone=None)
    huge = envelope("order.shipped", user.id, data={"order": "x" * 600_000})
    good = envelope("order.shipped", user.id)
    dispatch(fresh_topic, [huge, good])
    log = statuses(huge["id"])
    assert log["email"][0] == "dlq" and "bytes" in log["email"][1], "three copies of the order: over 1 MB"
    [dead] = consume_matching(
        channel_topic("email", "dlq"), lambda m: huge["id"].encode() in (m.value() or b"")[:2000], expected=1
    )
    assert dict(dead.headers())["error-class"] == b"render_error"
    assert len(out("email", good["id"])) == 1


def test_unknown_recipients_are_counted_and_skipped_not_crashed(types, django_user_model, fresh_topic):
    before = REGISTRY.get_sample_value("dispatcher_events_total", {"outcome": "unknown_recipient"}) or 0
    unknown = envelope("order.shipped", 987654321)
    never_identified = {**envelope("order.shipped", 0), "recipient": "never-identified"}
    known = envelope("order.shipped", make_user(django_user_model).id)
    dispatch(fresh_topic, [unknown, never_identified, known])
    assert not DeliveryLog.objects.filter(event_id__in=[unknown["id"], never_identified["id"]]).exists()
    assert REGISTRY.get_sample_value("dispatcher_events_total", {"outcome": "unknown_recipient"}) == before + 2
    assert len(out("email", known["id"])) == 1


def test_events_name_recipients_by_external_id(types, django_user_model, fresh_topic):
    named = make_user(django_user_model)
    RecipientProfile.objects.filter(user=named).update(external_id="shop-user-1")
    by_external_id = {**envelope("order.shipped", 0), "recipient": "shop-user-1"}
    by_internal_id = envelope("order.shipped", named.id)  # an external id hides the internal one
    legacy = {**envelope("order.shipped", 0), "recipient": make_user(django_user_model).id}  # an int, as before
    dispatch(fresh_topic, [by_external_id, by_internal_id, legacy])
    [message] = out("email", by_external_id["id"])
    assert message["user_id"] == named.id and message["to"] == {"email": named.email}
    assert not DeliveryLog.objects.filter(event_id=by_internal_id["id"]).exists()
    assert len(out("email", legacy["id"])) == 1


def test_end_to_end_post_relay_dispatch(types, django_user_model, settings, running):
    """POST /api/v1/events → outbox → relay → notif.events → dispatcher (consumer group) → notif.email."""
    user = make_user(django_user_model)
    _key, raw = ApiKey.generate(service="shop")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    relay = OutboxRelay(
        RelayConfig(conninfo=conninfo_from_django(), producer_config=producer_config(), buckets=settings.OUTBOX_BUCKETS)
    )
    runner = ConsumerRunner(
        RunnerConfig(role="dispatcher", topics=[topic_name("events")], group=f"dispatcher-{uuid.uuid4().hex[:6]}"),
        Dispatcher(producer=Producer(producer_config()), redis_client=get_redis()),
    )
    with running(relay), running(runner):
        with transaction.atomic():
            response = client.post(
                "/api/v1/events",
                {"event_id": "o-77", "type": "order.shipped", "recipients": [str(user.id)], "data": {"order": "77"}},
                format="json",
            )
        assert response.status_code == 202
        event_id = response.json()["id"]
        [email] = out("email", event_id)
        assert email["content"]["subject"] == "Order 77 shipped"
        deadline = time.monotonic() + 10
        while statuses(event_id).get("email") != ("queued", "") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert statuses(event_id)["email"] == ("queued", "")


def test_parked_messages_are_drained_once_the_switch_is_back_to_normal(types, django_user_model, fresh_topic):
    from notifications.dispatch.drain import DrainRefused, drain_parked

    switch = KillSwitch.objects.create(channel="email", mode="delay")
    user = make_user(django_user_model)
    event = envelope("order.shipped", user.id)
    dispatch(fresh_topic, [event])
    assert out("email", event["id"], expected=0) == []
    with pytest.raises(DrainRefused):
        drain_parked(channel="email")
    switch.mode = "normal"
    switch.save()
    assert drain_parked(channel="email").moved >= 1
    assert len(out("email", event["id"])) == 1


def test_each_class_travels_in_its_lane_also_when_held_or_parked(types, django_user_model, fresh_topic):
    """Urgent and transactional messages go to notif.<channel>, bulk (marketing) to notif.<channel>.bulk;
    quiet hours release them into the same lanes, and a drain of kill-switch-parked messages too."""
    from notifications.dispatch.drain import drain_parked

    user = make_user(django_user_model, phone="")
    quiet = {"quiet_hours": {"enabled": True, "start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}}
    sleeper = make_user(django_user_model, document=quiet, device=False, phone="")
    texter = make_user(django_user_model, device=False, document={"categories": {"marketing": {"sms": True}}})
    NotificationTemplate.objects.create(notification_type=types["digest"], channel="sms", body="News")
    switch = KillSwitch.objects.create(channel="sms", mode="delay")
    urgent, normal, bulk = (envelope(t, user.id) for t in ("auth.password_reset", "order.shipped", "marketing.digest"))
    held = [envelope("order.shipped", sleeper.id), envelope("marketing.digest", sleeper.id)]
    parked = [envelope("order.shipped", texter.id), envelope("marketing.digest", texter.id)]
    night = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
    dispatch(fresh_topic, [urgent, normal, bulk, *held, *parked], clock=lambda: night)

    [reset] = out("email", urgent["id"])
    [shipped] = out("email", normal["id"])
    [digest] = out("email", bulk["id"], lane=Lane.BULK)
    assert (reset["priority"], shipped["priority"], digest["priority"]) == ("urgent", "transactional", "bulk")
    assert out("email", bulk["id"], expected=0) == [], "no bulk in the priority lane"
    assert out("email", normal["id"], expected=0, lane=Lane.BULK) == [], "no transactional in the bulk lane"

    held_email = ScheduledMessage.objects.filter(key=str(sleeper.id), payload__channel="email")
    topics = dict(held_email.values_list("payload__event_id", "topic"))
    assert topics == {held[0]["id"]: delivery_topic("email"), held[1]["id"]: delivery_topic("email", Lane.BULK)}
    assert release_due_messages() == 3, "both e-mails and the in-app message (the window ended on the 26th)"
    lanes = dict(OutboxEvent.objects.filter(key=str(sleeper.id), topic__contains="email").values_list("topic", "lane"))
    assert lanes == {delivery_topic("email"): 0, delivery_topic("email", Lane.BULK): 1}, "bulk rows relay last"

    assert [statuses(e["id"])["sms"] for e in parked] == [("parked", "kill_switch_delay")] * 2
    switch.mode = "normal"
    switch.save()
    assert drain_parked(channel="sms").moved == 2
    assert len(out("sms", parked[0]["id"])) == 1 and out("sms", parked[0]["id"], expected=0, lane=Lane.BULK) == []
    assert len(out("sms", parked[1]["id"], lane=Lane.BULK)) == 1 and out("sms", parked[1]["id"], expected=0) == []


def test_a_template_that_does_not_render_is_refused_on_save(types):
    from django.core.exceptions import ValidationError

    broken = NotificationTemplate(notification_type=types["shipped"], channel="sms", locale="fr", body="{% if %}broken")
    with pytest.raises(ValidationError) as info:
        broken.full_clean()
    assert "body" in info.value.message_dict
    bad_json = NotificationTemplate(notification_type=types["shipped"], channel="webhook", payload="{not json")
    with pytest.raises(ValidationError) as info:
        bad_json.full_clean()
    assert "payload" in info.value.message_dict


def test_admin_preview_renders_every_template(types, admin_client):
    page = admin_client.get(f"/admin/notifications/notificationtype/{types['shipped'].pk}/change/")
    assert page.status_code == 200
    assert b"Bestellung 1 versandt" in page.content and b"Order 1 shipped" in page.content
