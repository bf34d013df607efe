"""Quiet hours and frequency caps on campaign sends (real Kafka, PostgreSQL, Redis).

The expander judges quiet hours and cap windows by its ``wall_clock``, which these tests control the
way the dispatcher's quiet-hours test controls the dispatcher's clock: 23:30 UTC is 00:30 in Berlin,
inside a 22:00-07:00 window that ends at 06:00 UTC. "After the window" is the clock moved past it and
the held row's ``due_at`` moved into the past, then released by ``release_due_messages`` (the
dispatcher's tick) and relayed by a real outbox relay.
"""

import time
from datetime import UTC, datetime

import orjson
import pytest
import redis as redis_lib
from confluent_kafka import Producer
from django.conf import settings
from django.db import connections

from campaigns import services
from campaigns.expansion.expander import BatchExpander
from campaigns.models import Campaign, CampaignState
from campaigns.progress import pending_deferred_count, progress_snapshot, read_counters, read_details
from notifications.bus.config import producer_config
from notifications.bus.consumers import batch_topics, consumer
from notifications.bus.runner import ConsumerRunner
from notifications.bus.topics import channel_topic
from notifications.dispatch.scheduling import release_due_messages
from notifications.models import DeliveryLog, ScheduledMessage
from notifications.outbox.relay import RELAY_PRODUCER_OVERRIDES, OutboxRelay, RelayConfig, conninfo_from_django
from notifications.redis_client import get_redis
from preferences.frequency import frequency_cap_take
from tests.campaigns.conftest import copy_users, make_campaign
from tests.campaigns.helpers import emit, expander, keys, launch_running, released
from tests.kafka_helpers import consume
from tests.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]

NIGHT = datetime(2035, 11, 25, 23, 30, tzinfo=UTC)  # 00:30 in Berlin, 08:30 in Tokyo
BERLIN_END = datetime(2035, 11, 26, 6, 0, tzinfo=UTC)  # 07:00 Berlin
MORNING = datetime(2035, 11, 26, 6, 0, 30, tzinfo=UTC)
CAP = {"marketing": {"email": {"max": 1, "per": "day"}}}
BERLIN = {"enabled": True, "start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}
TOKYO_LUNCH = {"enabled": True, "start": "08:00", "end": "09:15", "timezone": "Asia/Tokyo"}  # ends 00:15 UTC


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def relay_outbox() -> int:
    """One pass of the real outbox relay: what the relay process does with released rows."""
    relay = OutboxRelay(
        RelayConfig(
            conninfo=conninfo_from_django(),
            producer_config=producer_config(**RELAY_PRODUCER_OVERRIDES),
            buckets=settings.OUTBOX_BUCKETS,
            batch_size=500,
            poll_interval=0.2,
        )
    )
    relay._connect()
    try:
        relay.rebalance()
        return relay.relay_batch()
    finally:
        relay.close()


def release_now(channel: str, *, expected_batches: int, on_topic: int) -> list:
    """Make every held row due, release it (the dispatcher's tick), relay it; returns the deferred
    batch messages on the topic (which holds `on_topic` batch messages in all by then)."""
    ScheduledMessage.objects.update(due_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert release_due_messages() == expected_batches
    assert relay_outbox() >= expected_batches  # (plus the campaign's own state events)
    messages = consume(channel_topic(channel, "batch"), expected=on_topic, timeout=10, idle=0.5)
    return [m for m in messages if orjson.loads(m.value()).get("part")]


def log_of(campaign) -> dict[int, tuple[str, str]]:
    rows = DeliveryLog.objects.filter(event_id=campaign.launch_id).values_list("user_id", "status", "reason")
    return {user_id: (status, reason) for user_id, status, reason in rows}


def test_capped_users_are_suppressed_and_quiet_hours_users_deferred_then_sent_once(topics, promo_type, marketer):
    # 0-3 nothing set; 4-6 capped at 1 a day, already used; 7-8 capped, unused; 9-11 in quiet hours (and capped).
    def document(i):
        if 4 <= i <= 8:
            return {"frequency_caps": CAP}
        if i >= 9:
            return {"frequency_caps": CAP, "quiet_hours": BERLIN}
        return None

    ids = copy_users(12, document=document)
    redis = get_redis()
    for uid in ids[4:7]:
        first = frequency_cap_take(
            redis, user_id=uid, category="marketing", channel="email", caps=CAP["marketing"], now=NIGHT
        )
        assert first.allowed, "the day's one marketing e-mail, taken before the campaign"
    campaign = launch_running(make_campaign(promo_type, channels=["email"]), marketer)
    clock = Clock(NIGHT)
    handler = expander(clock, chunk_size=5)  # several chunks: one deferred batch per chunk and due time

    assert handler.handle_batch(emit(campaign, "email", ids)) == {}
    first_wave = released("email", 6)
    assert sorted(m["user_id"] for m in first_wave) == ids[0:4] + ids[7:9]
    log = log_of(campaign)
    assert {uid: log[uid] for uid in ids[4:7]} == dict.fromkeys(ids[4:7], ("suppressed", "frequency_cap"))
    assert {uid: log[uid] for uid in ids[9:]} == dict.fromkeys(ids[9:], ("scheduled", "quiet_hours"))
    held = list(ScheduledMessage.objects.order_by("id"))
    assert {m.due_at for m in held} == {BERLIN_END}, "deferred to the end of the window (07:00 Berlin)"
    assert all(m.topic == channel_topic("email", "batch") for m in held)
    assert sorted(uid for m in held for uid in m.payload["user_ids"]) == ids[9:]
    assert all(m.payload["caps_taken"] is True and m.payload["launch_id"] == str(campaign.launch_id) for m in held)
    counters = read_counters(redis, [campaign.pk])[campaign.pk]
    assert (counters["queued"], counters["suppressed"]) == (6, 3)
    assert read_details(redis, campaign.pk) == {"deferred": 3, "suppressed_by_reason": {"frequency_cap": 3}}
    assert pending_deferred_count(redis, campaign_id=campaign.pk, launch_id=str(campaign.launch_id)) == len(held)
    assert release_due_messages() == 0, "nothing is released before the window ends"
    for uid in ids[9:]:  # their token was taken when they were deferred (as the dispatcher does)
        again = frequency_cap_take(
            redis, user_id=uid, category="marketing", channel="email", caps=CAP["marketing"], now=NIGHT
        )
        assert not again.allowed

    # The window ends: the held batches are released, relayed and expanded; only now are they sent.
    clock.now = MORNING
    batches = release_now("email", expected_batches=len(held), on_topic=1 + len(held))
    assert handler.handle_batch(batches) == {}
    second_wave = released("email", 9, timeout=5)
    assert len(second_wave) == 9
    later = [m for m in second_wave if m["user_id"] in ids[9:]]
    assert sorted(m["user_id"] for m in later) == ids[9:]
    assert {m["id"] for m in later} == {f"{campaign.launch_id}:{uid}:email" for uid in ids[9:]}
    assert all(m["meta"]["campaign_id"] == campaign.pk for m in later), "the workers' halt flags apply to them"
    launch_day = "2026-11-25"  # the batch's day (see emit), whatever the clock says when it is sent
    assert {m.payload["log_day"] for m in held} == {launch_day}
    assert {m["log_day"] for m in later} == {launch_day}, "the workers update the rows written at night"
    days = DeliveryLog.objects.filter(event_id=campaign.launch_id, user_id__in=ids[9:]).values_list("created_day")
    assert {day.isoformat() for (day,) in days} == {launch_day}
    every_id = [m["id"] for m in second_wave]
    assert len(every_id) == len(set(every_id)) == 9, "nobody twice"
    assert read_details(redis, campaign.pk)["deferred"] == 0
    assert pending_deferred_count(redis, campaign_id=campaign.pk, launch_id=str(campaign.launch_id)) == 0
    assert read_counters(redis, [campaign.pk])[campaign.pk]["queued"] == 9
    for uid in ids[9:]:  # no second token at release: today's window is still unused
        today = frequency_cap_take(
            redis, user_id=uid, category="marketing", channel="email", caps=CAP["marketing"], now=MORNING
        )
        assert today.allowed

    # Redelivered (the original batch, the deferred ones): nothing again, nothing scheduled again.
    assert handler.handle_batch(emit(campaign, "email", ids)) == {}
    assert handler.handle_batch(batches) == {}
    assert len(released("email", 10, timeout=3)) == 9
    assert ScheduledMessage.objects.count() == 0


def test_a_paused_campaign_holds_released_quiet_hours_batches_and_a_cancelled_one_drops_them(
    topics, promo_type, marketer
):
    berlin = copy_users(3, document={"quiet_hours": BERLIN})
    tokyo = copy_users(2, document={"quiet_hours": TOKYO_LUNCH})
    campaign = launch_running(make_campaign(promo_type, channels=["email"]), marketer)
    clock = Clock(NIGHT)
    handler = expander(clock)
    assert handler.handle_batch(emit(campaign, "email", berlin + tokyo)) == {}
    held = {m.due_at: m for m in ScheduledMessage.objects.all()}
    assert set(held) == {BERLIN_END, datetime(2035, 11, 26, 0, 15, tzinfo=UTC)}, "one batch per window end"
    assert sorted(held[BERLIN_END].payload["user_ids"]) == berlin

    # Tokyo's window ends first; the campaign is paused by then: the batch is held, not sent.
    services.campaign_pause(campaign_id=campaign.pk, user=marketer)
    clock.now = datetime(2035, 11, 26, 0, 16, tzinfo=UTC)
    ScheduledMessage.objects.exclude(due_at=BERLIN_END).update(due_at=datetime(2020, 1, 1, tzinfo=UTC))
    assert release_due_messages() == 1 and relay_outbox() >= 1
    [tokyo_batch] = [
        m for m in consume(channel_topic("email", "batch"), expected=2, timeout=5) if b'"part"' in m.value()
    ]
    handler.campaigns._views.clear()  # read the pause now rather than within a second
    deferrals = handler.handle_batch([tokyo_batch])
    [(offset, _due)] = deferrals.values()
    assert offset == tokyo_batch.offset(), "paused: held back and looked at again later"
    assert released("email", 1, timeout=2) == []
    services.campaign_resume(campaign_id=campaign.pk, user=marketer)
    handler.campaigns._views.clear()
    assert handler.handle_batch([tokyo_batch]) == {}
    assert sorted(m["user_id"] for m in released("email", 2)) == tokyo

    # Cancelled before Berlin's window ends: that batch is dropped at release, its users settled.
    services.campaign_cancel(campaign_id=campaign.pk, user=marketer)
    clock.now = MORNING
    [berlin_batch] = [
        m
        for m in release_now("email", expected_batches=1, on_topic=3)
        if orjson.loads(m.value())["user_ids"] == sorted(berlin)
    ]
    handler.campaigns._views.clear()
    assert handler.handle_batch([berlin_batch]) == {}
    assert len(released("email", 3, timeout=3)) == 2, "nothing more after the cancel"
    log = log_of(campaign)
    assert {uid: log[uid] for uid in berlin} == dict.fromkeys(berlin, ("suppressed", "campaign_cancelled"))
    assert {uid: log[uid][0] for uid in tokyo} == dict.fromkeys(tokyo, "scheduled"), "sent on; a worker settles it"
    redis = get_redis()
    details = read_details(redis, campaign.pk)
    assert details == {"deferred": 0, "suppressed_by_reason": {"campaign_cancelled": 3}}
    assert pending_deferred_count(redis, campaign_id=campaign.pk, launch_id=str(campaign.launch_id)) == 0
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.CANCELLED


class _ExpanderRole:
    """The batch expander as a role in this process (its wall clock is the test's), closing its
    thread's database connection when it stops."""

    def __init__(self, clock: Clock):
        handler = BatchExpander(producer=Producer(producer_config()), redis_client=get_redis(), wall_clock=clock)
        self.runner = ConsumerRunner(
            consumer("campaign-expander").runner_config(topics=batch_topics(["email"]), batch_size=8, poll_timeout=0.2),
            handler,
        )
        self.stop_event = self.runner.stop_event
        self.assigned = self.runner.assigned

    def run(self):
        try:
            self.runner.run()
        finally:
            connections.close_all()


@pytest.mark.slow
def test_end_to_end_capped_users_suppressed_quiet_hours_users_sent_after_the_window_nobody_twice(
    platform, providers, sandbox, promo_type, marketer, running
):
    """Orchestrator, worker and dispatcher as processes, the relay in a thread, the expander in a
    thread on the test's clock; sends counted at the e-mail sandbox."""

    def document(i):
        if i % 4 in (0, 2):
            return {"frequency_caps": CAP}  # 0: the day's one e-mail already sent; 2: not yet
        if i % 4 == 1:
            return {"frequency_caps": CAP, "quiet_hours": BERLIN}
        return None

    ids = copy_users(40, document=document, attributes={"cohort": "qh"}, tag="qh")
    capped = [uid for i, uid in enumerate(ids) if i % 4 == 0]
    quiet = [uid for i, uid in enumerate(ids) if i % 4 == 1]
    at_once = [uid for i, uid in enumerate(ids) if i % 4 in (2, 3)]
    redis = get_redis()
    for uid in capped:
        frequency_cap_take(redis, user_id=uid, category="marketing", channel="email", caps=CAP["marketing"], now=NIGHT)
    campaign = make_campaign(
        promo_type, channels=["email"], audience={"all": [{"field": "attributes.cohort", "op": "eq", "value": "qh"}]}
    )
    clock = Clock(NIGHT)
    client = sandbox.client("sendgrid")
    platform.orchestrator()
    platform.start("worker_email", "run_worker", "--channel", "email")
    platform.start("dispatcher", "run_dispatcher")  # its tick releases due ScheduledMessage rows
    with running(_ExpanderRole(clock)):
        services.campaign_launch(campaign_id=campaign.pk, user=marketer)
        campaign.refresh_from_db()
        wait_for(lambda: client.stats()["accepted"] >= len(at_once), timeout=90, what="the first wave sent")
        wait_for(lambda: ScheduledMessage.objects.exists(), timeout=10, what="the quiet-hours batch held")
        time.sleep(3.0)  # longer than CAMPAIGN_PROGRESS_FLUSH_SECONDS: the orchestrator checked completion
        assert client.stats()["accepted"] == len(at_once), "nobody in quiet hours or over the cap was sent to"
        assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.RUNNING, (
            "not completed while recipients wait for their quiet hours to end"
        )
        [held] = ScheduledMessage.objects.all()
        assert held.due_at == BERLIN_END and sorted(held.payload["user_ids"]) == quiet

        clock.now = MORNING  # the window ends
        ScheduledMessage.objects.update(due_at=datetime(2020, 1, 1, tzinfo=UTC))
        wait_for(
            lambda: client.stats()["accepted"] >= len(at_once) + len(quiet), timeout=60, what="sent after the window"
        )
        time.sleep(2.0)  # anything sent twice would show up now
        sent = keys(sandbox, "sendgrid")
        assert set(sent) == {f"{campaign.launch_id}:{uid}:email" for uid in at_once + quiet}
        assert max(sent.values()) == 1, "nobody twice"
        wait_for(
            lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.COMPLETED,
            timeout=20,
            what="completed once the deferred batch is expanded",
        )
    wait_for(
        lambda: all(log_of(campaign).get(uid, ("",))[0] == "sent" for uid in quiet + at_once),
        timeout=20,
        what="the workers logged the sends",
    )
    log = log_of(campaign)
    assert {uid: log[uid] for uid in capped} == dict.fromkeys(capped, ("suppressed", "frequency_cap"))
    snapshot = progress_snapshot(Campaign.objects.get(pk=campaign.pk))
    assert snapshot["suppressed_by_reason"] == {"frequency_cap": len(capped)} and snapshot["deferred"] == 0
    wait_for(
        lambda: progress_snapshot(Campaign.objects.get(pk=campaign.pk))["sent"] == len(at_once) + len(quiet),
        timeout=20,
        what="progress counts every send",
    )


def test_caps_and_quiet_hours_cost_the_same_redis_round_trips_for_6_or_300_recipients(
    topics, promo_type, marketer, monkeypatch
):
    def document(i):
        return [{"frequency_caps": CAP}, {"frequency_caps": CAP, "quiet_hours": BERLIN}, None][i % 3]

    warm, small, large = (copy_users(n, document=document) for n in (3, 6, 300))
    campaign = launch_running(make_campaign(promo_type, channels=["email"]), marketer)
    handler = expander(Clock(NIGHT))
    handler.handle_batch(emit(campaign, "email", warm, batch=0))  # scripts loaded, campaign cached
    trips = {"n": 0}
    command, execute = redis_lib.Redis.execute_command, redis_lib.client.Pipeline.execute

    def counted_command(self, *args, **kwargs):
        trips["n"] += 1
        return command(self, *args, **kwargs)

    def counted_execute(self, *args, **kwargs):
        trips["n"] += 1
        return execute(self, *args, **kwargs)

    def round_trips(user_ids, batch):
        message = emit(campaign, "email", user_ids, batch=batch)
        monkeypatch.setattr(redis_lib.Redis, "execute_command", counted_command)
        monkeypatch.setattr(redis_lib.client.Pipeline, "execute", counted_execute)
        trips["n"] = 0
        assert handler.handle_batch(message) == {}
        monkeypatch.undo()
        return trips["n"]

    # cursor GET, preferences MGET (+ the cache-warming pipeline for misses), caps pipeline, cursor MULTI
    assert round_trips(small, 1) == round_trips(large, 2) <= 5
    counters = read_details(get_redis(), campaign.pk)
    assert counters["deferred"] == 1 + 2 + 100, "a third of every batch waits for its quiet hours"
    assert ScheduledMessage.objects.count() == 3, "one deferred batch per batch (one chunk each) and window end"
