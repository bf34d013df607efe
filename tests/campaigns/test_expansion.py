"""Batch expansion: batch messages become paced, rendered per-recipient channel messages."""

import time

import pytest
from confluent_kafka import Producer
from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaigns import services
from campaigns.progress import read_counters
from notifications.bus.config import producer_config
from notifications.bus.topics import channel_topic
from notifications.models import KillSwitch
from notifications.redis_client import get_redis
from preferences.models import Device, PreferenceDocument
from tests.campaigns.conftest import copy_users, make_campaign
from tests.campaigns.helpers import emit, expander, launch_running, released
from tests.kafka_helpers import consume

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_expands_rendered_messages_in_the_recipients_locale(topics, promo_type, marketer):
    ids = copy_users(6, locale=lambda i: "de-ch" if i % 2 else "en", email=lambda i: i != 4)
    campaign = launch_running(
        make_campaign(
            promo_type,
            channels=["email"],
            throttle=500,
            copies={("email", "de"): {"subject": "Hallo {{ user.first_name }}", "body": "Rabatt"}},
        ),
        marketer,
    )
    handler = expander()
    assert handler.handle_batch(emit(campaign, "email", ids)) == {}
    messages = {m["user_id"]: m for m in released("email", 5)}
    assert set(messages) == set(ids) - {ids[4]}, "the user without an e-mail address is suppressed"
    m = messages[ids[1]]
    assert m["id"] == f"{campaign.launch_id}:{ids[1]}:email" and m["event_id"] == str(campaign.launch_id)
    assert m["priority"] == "bulk" and m["urgency"] == "bulk" and m["category"] == "marketing"
    assert m["meta"] == {"campaign_id": campaign.pk, "launch_id": str(campaign.launch_id), "throttle": 500}
    assert m["content"]["subject"] == "Hallo First1" and m["locale"] == "de-ch"
    assert messages[ids[0]]["content"]["subject"] == "Spring sale, First0"
    assert "/unsubscribe/" in messages[ids[0]]["content"]["list_unsubscribe"]
    assert read_counters(get_redis(), [campaign.pk])[campaign.pk] == {
        "queued": 5,
        "suppressed": 1,
        "extra": 0,
        "sent": 0,
        "failed": 0,
        "deduplicated": 0,
        "halted": 0,
    }
    assert handler.handle_batch(emit(campaign, "email", ids)) == {}, "a re-delivered batch is already done"
    assert len(released("email", 6, timeout=3)) == 5, "and produces nothing again"


def test_push_is_split_per_platform_and_late_opt_outs_are_respected(topics, promo_type, marketer):
    ids = copy_users(4, device="fcm")
    Device.objects.create(user_id=ids[0], platform="apns", token="a" * 64)
    PreferenceDocument.objects.create(
        user_id=ids[3], document={"categories": {"marketing": {"push": False}}}, version=1
    )  # opted out after the batch was emitted
    campaign = launch_running(make_campaign(promo_type, channels=["push"]), marketer)
    expander().handle_batch(emit(campaign, "push", ids))
    messages = released("push", 4)
    assert sorted(m["id"] for m in messages) == sorted(
        [
            f"{campaign.launch_id}:{ids[0]}:push:apns",
            f"{campaign.launch_id}:{ids[0]}:push:fcm",
            f"{campaign.launch_id}:{ids[1]}:push:fcm",
            f"{campaign.launch_id}:{ids[2]}:push:fcm",
        ]
    )
    assert {m["to"]["platform"] for m in messages} == {"fcm", "apns"}
    counters = read_counters(get_redis(), [campaign.pk])[campaign.pk]
    assert counters["queued"] == 4 and counters["extra"] == 1 and counters["suppressed"] == 1


def test_a_batch_costs_a_constant_number_of_queries(topics, promo_type, marketer):
    campaign = launch_running(make_campaign(promo_type, channels=["email"]), marketer)
    small, large = copy_users(10), copy_users(400)
    handler = expander()
    handler.handle_batch(emit(campaign, "email", [small[0]], batch=0))  # warm the campaign cache
    with CaptureQueriesContext(connection) as q_small:
        handler.handle_batch(emit(campaign, "email", small, batch=1))
    with CaptureQueriesContext(connection) as q_large:
        handler.handle_batch(emit(campaign, "email", large, batch=2))

    def recipient_queries(captured):  # the campaign's state and kill switches are re-read on a timer
        return [
            q["sql"][:60]
            for q in captured
            if "campaigns_campaign" not in q["sql"] and "notifications_killswitch" not in q["sql"]
        ]

    assert len(recipient_queries(q_small)) == len(recipient_queries(q_large)) <= 4, recipient_queries(q_large)


def test_paused_defers_and_cancelled_drops(topics, promo_type, marketer):
    ids = copy_users(5)
    campaign = launch_running(make_campaign(promo_type, channels=["email"]), marketer)
    services.campaign_pause(campaign_id=campaign.pk, user=marketer)
    handler = expander()
    batch = emit(campaign, "email", ids)
    deferrals = handler.handle_batch(batch)
    [(_tp, (offset, due))] = deferrals.items()
    assert offset == batch[0].offset() and due > time.monotonic(), "paused: held back and looked at again later"
    services.campaign_cancel(campaign_id=campaign.pk, user=marketer)
    time.sleep(1.1)  # the expander re-reads a campaign's state every second
    assert handler.handle_batch(batch) == {}
    assert released("email", 1, timeout=2) == [], "nothing of a cancelled campaign is released"


def test_kill_switch_drop_non_urgent_suppresses_the_batch(topics, promo_type, marketer):
    ids = copy_users(3)
    campaign = launch_running(make_campaign(promo_type, channels=["email"]), marketer)
    KillSwitch.objects.create(channel="email", mode="drop_non_urgent")
    expander().handle_batch(emit(campaign, "email", ids))
    assert read_counters(get_redis(), [campaign.pk])[campaign.pk]["suppressed"] == 3


def test_throttle_paces_the_release(topics, promo_type, marketer, fast_providers):
    ids = copy_users(120)
    campaign = launch_running(make_campaign(promo_type, channels=["email"], throttle=60), marketer)
    handler = expander(pacing=True, time_budget=0.5, chunk_size=1000)
    batch = emit(campaign, "email", ids)
    started = time.monotonic()
    rounds = 0
    while True:
        rounds += 1
        deferrals = handler.handle_batch(batch)
        if not deferrals:
            break
        [(_tp, (_offset, due))] = deferrals.items()
        time.sleep(max(0.0, due - time.monotonic()))
    elapsed = time.monotonic() - started
    assert len(released("email", 120)) == 120
    assert rounds > 1, "the batch was handed back to the runner while it waited for tokens"
    assert 1.6 <= elapsed <= 4.0, f"120 messages at 60/s (burst 6) take about 1.9 s, took {elapsed:.1f}s"


def test_malformed_batch_goes_to_the_dlq(topics, promo_type):
    producer = Producer(producer_config())
    producer.produce(channel_topic("sms", "batch"), key=b"x", value=b"not json")
    assert producer.flush(10) == 0
    batch = consume(channel_topic("sms", "batch"), expected=1, timeout=10)
    assert expander().handle_batch(batch) == {}
    [dead] = consume(channel_topic("sms", "dlq"), expected=1, timeout=10)
    assert dict(dead.headers())["error-class"] == b"invalid_batch"
