"""The orchestrator: keyset pages with preferences in SQL, one batch message per page and channel, checkpoints."""

import datetime as dt

import orjson
import pytest
from confluent_kafka import Producer
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaigns import services
from campaigns.models import Campaign, CampaignLaunch, CampaignState
from campaigns.orchestrator import CampaignOrchestrator
from campaigns.progress import record_expansion, record_outcomes, sent_tally
from campaigns.selectors import audience_estimate, audience_page
from notifications.bus.config import producer_config
from notifications.bus.topics import channel_topic
from notifications.delivery.dedup import DedupStore
from notifications.outages import KafkaUnavailable
from notifications.redis_client import get_redis
from tests.campaigns.conftest import copy_users, make_campaign
from tests.kafka_helpers import consume

pytestmark = [pytest.mark.django_db(transaction=True)]

SEGMENTED = {"all": [{"field": "attributes.segment", "op": "exists", "value": True}]}
DOCS = {
    "opted_out_email": {"categories": {"marketing": {"email": False}}},
    "unsubscribed": {"categories": {"marketing": {c: False for c in ("email", "push", "sms", "inapp", "webhook")}}},
    "muted": {"global_mute": True},
    "opted_out_transactional": {"categories": {"transactional": {"email": False}}},
}


@pytest.fixture
def audience():
    """40 users: every 10 users cycle through plain, opted out of marketing email, unsubscribed, muted,
    opted out of another category only, no e-mail address; every other user has a push device."""
    kinds = [
        "plain",
        "opted_out_email",
        "unsubscribed",
        "muted",
        "opted_out_transactional",
        "no_email",
        "plain",
        "plain",
        "plain",
        "plain",
    ]
    ids = copy_users(
        40,
        document=lambda i: DOCS.get(kinds[i % 10]),
        email=lambda i: kinds[i % 10] != "no_email",
        device=lambda i: "fcm" if i % 2 == 0 else None,
        attributes=lambda i: {"segment": "a" if i < 30 else "b"},
    )
    return {
        "ids": ids,
        "kind": {uid: kinds[i % 10] for i, uid in enumerate(ids)},
        "device": {uid for i, uid in enumerate(ids) if i % 2 == 0},
    }


def expected(audience, channel, *, segment_a_only=True):
    out = []
    for i, uid in enumerate(audience["ids"]):
        kind = audience["kind"][uid]
        if segment_a_only and i >= 30:
            continue
        if kind in ("unsubscribed", "muted"):
            continue
        if channel == "email" and kind in ("opted_out_email", "no_email"):
            continue
        if channel == "push" and uid not in audience["device"]:
            continue
        out.append(uid)
    return out


def test_one_page_is_one_query_with_preferences_and_contact_points(promo_type, audience):
    campaign = make_campaign(
        promo_type,
        channels=["email", "push"],
        audience={"all": [{"field": "attributes.segment", "op": "eq", "value": "a"}]},
    )
    with CaptureQueriesContext(connection) as queries:
        page = audience_page(campaign, channels=["email", "push"], after_id=0, limit=1000)
    assert len(queries) == 1
    sql = queries[0]["sql"]
    assert "ORDER BY" in sql and "LIMIT 1000" in sql and '"auth_user"."id" > 0' in sql
    assert page.user_ids == audience["ids"][:30]
    assert page.eligible["email"] == expected(audience, "email")
    assert page.eligible["push"] == expected(audience, "push")
    second = audience_page(campaign, channels=["email"], after_id=audience["ids"][9], limit=10)
    assert second.user_ids == audience["ids"][10:20], "keyset: the next page starts after the last id"
    estimate = audience_estimate(campaign)
    assert estimate.matching == 30
    assert estimate.eligible == {"email": len(expected(audience, "email")), "push": len(expected(audience, "push"))}


def run_launch(orchestrator, campaign, marketer):
    services.campaign_launch(campaign_id=campaign.pk, user=marketer)
    campaign.refresh_from_db()
    orchestrator.record_launches(
        [
            CampaignLaunch(
                launch_id=campaign.launch_id,
                campaign_id=campaign.pk,
                scheduled_for=campaign.schedule_at or campaign.launched_at,
            )
        ]
    )
    return campaign


def batches(channel, expected_count):
    messages = consume(channel_topic(channel, "batch"), expected=expected_count, timeout=20, idle=0.5)
    return sorted((orjson.loads(m.value()) for m in messages), key=lambda b: b["batch"])


def test_emits_one_batch_per_page_and_channel_and_checkpoints(topics, promo_type, audience, marketer):
    campaign = make_campaign(
        promo_type,
        channels=["email", "push"],
        audience={"all": [{"field": "attributes.segment", "op": "eq", "value": "a"}]},
    )
    orchestrator = CampaignOrchestrator(producer=Producer(producer_config()), redis_client=get_redis(), batch_size=7)
    campaign = run_launch(orchestrator, campaign, marketer)
    while orchestrator.step():
        pass
    campaign.refresh_from_db()
    launch = CampaignLaunch.objects.get(launch_id=campaign.launch_id)
    assert campaign.state == CampaignState.RUNNING and campaign.audience_size == 30
    assert launch.next_batch == 5 and launch.last_user_id == audience["ids"][29] and launch.emission_finished_at
    email = batches("email", 5)
    push = batches("push", 5)
    assert [b["batch"] for b in email] == [0, 1, 2, 3, 4]
    assert [u for b in email for u in b["user_ids"]] == expected(audience, "email")
    assert [u for b in push for u in b["user_ids"]] == expected(audience, "push")
    first = email[0]
    assert first["campaign_id"] == campaign.pk and first["launch_id"] == str(campaign.launch_id)
    assert first["content"]["campaign_id"] == campaign.pk and first["content"]["copy_version"]
    assert {b["log_day"] for b in email + push} == {launch.created_at.date().isoformat()}, "the launch's day"
    assert campaign.batches_emitted == launch.batch_messages == len(email) + len(push)
    assert campaign.recipients_emitted == len(expected(audience, "email")) + len(expected(audience, "push"))
    assert campaign.suppressed_preferences == 2 * 30 - campaign.recipients_emitted
    assert not orchestrator.step(), "nothing left to do"


class FlakyProducer:
    """Produces for real, but reports the first flush as failed (a crash between produce and checkpoint)."""

    def __init__(self):
        self.inner = Producer(producer_config())
        self.fail_next_flush = False

    def produce(self, *args, **kwargs):
        self.inner.produce(*args, **kwargs)

    def poll(self, timeout):
        return self.inner.poll(timeout)

    def flush(self, timeout):
        remaining = self.inner.flush(timeout)
        if self.fail_next_flush:
            self.fail_next_flush = False
            return 1
        return remaining


def test_a_failed_acknowledgement_leaves_the_checkpoint_and_a_restart_resumes(topics, promo_type, audience, marketer):
    campaign = make_campaign(promo_type, channels=["email"], audience=SEGMENTED)
    producer = FlakyProducer()
    orchestrator = CampaignOrchestrator(producer=producer, redis_client=get_redis(), batch_size=10)
    campaign = run_launch(orchestrator, campaign, marketer)
    assert orchestrator.step() and orchestrator.step()  # two pages committed
    producer.fail_next_flush = True
    with pytest.raises(KafkaUnavailable, match="produce failed"):  # the runner retries it after a backoff
        orchestrator.step()
    launch = CampaignLaunch.objects.get(launch_id=campaign.launch_id)
    assert launch.next_batch == 2 and launch.last_user_id == audience["ids"][19], "checkpoint not moved"
    restarted = CampaignOrchestrator(producer=Producer(producer_config()), redis_client=get_redis(), batch_size=10)
    while restarted.step():
        pass
    numbers = [b["batch"] for b in batches("email", 5)]
    assert sorted(set(numbers)) == [0, 1, 2, 3]
    assert numbers.count(0) == 1 and numbers.count(1) == 1, "committed pages are never emitted again"
    assert numbers.count(2) == 2, "only the page in hand at the failure is emitted twice"


def test_scheduled_campaign_starts_at_its_time_and_pause_stops_paging(topics, promo_type, audience, marketer):
    start = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    campaign = make_campaign(promo_type, channels=["email"], schedule_at=start, audience=SEGMENTED)
    clock = {"now": dt.datetime.now(dt.UTC)}
    orchestrator = CampaignOrchestrator(
        producer=Producer(producer_config()), redis_client=get_redis(), batch_size=10, clock=lambda: clock["now"]
    )
    campaign = run_launch(orchestrator, campaign, marketer)
    assert campaign.state == CampaignState.SCHEDULED
    assert not orchestrator.step(), "not due yet"
    clock["now"] = start + dt.timedelta(seconds=1)
    assert orchestrator.step()
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.RUNNING and campaign.started_at == clock["now"]
    services.campaign_pause(campaign_id=campaign.pk, user=marketer)
    assert not orchestrator.step(), "a paused campaign is not paged"
    services.campaign_resume(campaign_id=campaign.pk, user=marketer)
    while orchestrator.step():
        pass
    assert CampaignLaunch.objects.get(launch_id=campaign.launch_id).next_batch == 4


def test_launch_events_are_recorded_once_and_stale_ones_ignored(topics, promo_type, marketer):
    campaign = make_campaign(promo_type)
    orchestrator = CampaignOrchestrator(producer=Producer(producer_config()), redis_client=get_redis())
    campaign = run_launch(orchestrator, campaign, marketer)
    again = CampaignLaunch(launch_id=campaign.launch_id, campaign_id=campaign.pk, scheduled_for=campaign.launched_at)
    assert orchestrator.record_launches([again]) == 1
    assert CampaignLaunch.objects.count() == 1
    import uuid

    stale = CampaignLaunch(launch_id=uuid.uuid4(), campaign_id=campaign.pk, scheduled_for=campaign.launched_at)
    assert orchestrator.record_launches([stale]) == 0


def test_an_empty_audience_completes(topics, promo_type, marketer):
    campaign = make_campaign(promo_type, audience={"any": []})
    orchestrator = CampaignOrchestrator(producer=Producer(producer_config()), redis_client=get_redis())
    campaign = run_launch(orchestrator, campaign, marketer)
    while orchestrator.step():
        pass
    orchestrator.update_progress()
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.COMPLETED and campaign.audience_size == 0


def test_a_campaign_completes_only_when_every_queued_message_has_an_outcome(topics, promo_type, audience, marketer):
    campaign = make_campaign(promo_type, channels=["email"], audience=SEGMENTED)
    client = get_redis()
    orchestrator = CampaignOrchestrator(producer=Producer(producer_config()), redis_client=client, batch_size=10)
    campaign = run_launch(orchestrator, campaign, marketer)
    while orchestrator.step():
        pass
    launch = CampaignLaunch.objects.get(launch_id=campaign.launch_id)
    launch_id = str(campaign.launch_id)
    for batch in range(launch.batch_messages):  # every batch expanded: 3 messages queued each
        record_expansion(
            client, campaign_id=campaign.pk, launch_id=launch_id, channel="email", batch=batch,
            cursor=10, queued=3, suppressed=0, extra=0, done=True,
        )  # fmt: skip
    ids = [f"{launch_id}:{i}:email" for i in range(3 * launch.batch_messages)]
    meta = {"campaign_id": campaign.pk, "launch_id": launch_id}
    record_outcomes([(ids[0], "dlq", meta), (ids[1], "suppressed", meta)], redis_client=client)
    store = DedupStore(client, settings.REDIS_KEY_PREFIX)
    store.claim_many(ids[2:-1])  # what a worker does for the messages it sent
    store.confirm_many(ids[2:-1], tallies=dict.fromkeys(ids[2:-1], sent_tally(campaign.pk)))
    assert orchestrator.complete_finished() == 0, "one message is still on its way (in a retry tier, say)"
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.RUNNING
    record_outcomes([(ids[-1], "dlq", meta)], redis_client=client)
    assert orchestrator.complete_finished() == 1
    assert Campaign.objects.get(pk=campaign.pk).state == CampaignState.COMPLETED


def test_a_predicate_that_no_longer_compiles_fails_the_campaign(topics, promo_type, audience, marketer):
    campaign = make_campaign(promo_type)
    orchestrator = CampaignOrchestrator(producer=Producer(producer_config()), redis_client=get_redis())
    campaign = run_launch(orchestrator, campaign, marketer)
    Campaign.objects.filter(pk=campaign.pk).update(audience={"all": [{"field": "gone", "op": "eq", "value": 1}]})
    orchestrator.step()
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.FAILED and "unknown field 'gone'" in campaign.failure_reason
