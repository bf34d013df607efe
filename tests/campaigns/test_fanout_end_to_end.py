"""Fanout events end to end on the real services: an event addressed to a topic, accepted by the
ingest API, paged by the orchestrator, expanded and sent by the workers; the provider sandboxes and
the in-app inbox count what really went out.

``FANOUT_E2E_SUBSCRIBERS`` sets the size of the big topic: 10,000 by default (about 30 s here); the
issue's 50,000 (about 90 s of sending on the 2-core machine) with ``FANOUT_E2E_SUBSCRIBERS=50000``.
"""

import collections
import os
import time

import orjson
import pytest

from campaigns import services
from campaigns.models import Campaign, CampaignKind, CampaignLaunch, CampaignState
from notifications.bus.topics import channel_topic
from notifications.models import Category, NotificationTemplate, NotificationType, Urgency
from preferences.models import InboxMessage
from subscriptions.models import Topic
from tests.campaigns.conftest import copy_users, create_providers
from tests.kafka_helpers import consume
from tests.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SUBSCRIBERS = int(os.environ.get("FANOUT_E2E_SUBSCRIBERS", "10000"))


@pytest.fixture
def episode_type(db):
    """A product-update type (transactional lane) with e-mail and in-app templates using the event's data."""
    entry = NotificationType.objects.create(
        key="show.new_episode",
        name="New episode",
        category=Category.PRODUCT,
        urgency=Urgency.NORMAL,
        default_channels=["email", "inapp"],
    )
    NotificationTemplate.objects.create(
        notification_type=entry, channel="email", subject="New: {{ episode }}", body="Watch {{ data.episode }}"
    )
    NotificationTemplate.objects.create(notification_type=entry, channel="inapp", title="New", body="{{ episode }}")
    return entry


@pytest.fixture
def email_only(episode_type):
    """The type with its e-mail template only: its fanouts use e-mail alone (one expander, one worker)."""
    episode_type.templates.filter(channel="inapp").delete()
    return episode_type


@pytest.fixture
def fanout_providers(db):
    """SendGrid and in-app at campaign rates: the channels of the fanout types."""
    create_providers("sendgrid", "inapp")


def subscribe(service_client, key: str, user_ids) -> None:
    """Subscribe users (no external id: named by their decimal id) through the producer API."""
    user_ids = list(user_ids)
    for start in range(0, len(user_ids), 10_000):
        chunk = [str(u) for u in user_ids[start : start + 10_000]]
        response = service_client.post(f"/api/v1/topics/{key}/subscribers", {"recipients": chunk}, format="json")
        assert response.status_code == 200 and response.json()["unknown"] == [], response.content[:300]


def publish(service_client, event_id: str, key: str, **target):
    body = {"event_id": event_id, "type": "show.new_episode", "target": {"topic": key, **target}}
    response = service_client.post("/api/v1/events", {**body, "data": {"episode": "S1E2"}}, format="json")
    assert response.status_code == 202, response.content
    return response.json()


def make_topic(service_client, key: str) -> Topic:
    assert service_client.post("/api/v1/topics", {"key": key, "name": key}, format="json").status_code == 201
    return Topic.objects.get(key=key)


def email_keys(sandbox) -> collections.Counter:
    return collections.Counter(r["idempotency_keys"][0] for r in sandbox.client("sendgrid").iter_requests())


def start_pipeline(platform, *orchestrator_args: str, channels=("email",)) -> None:
    platform.orchestrator(*orchestrator_args)
    platform.start("expander", "run_batch_expander", *[a for c in channels for a in ("--channel", c)])
    for channel in channels:
        platform.start(f"worker_{channel}", "run_worker", "--channel", channel)


def test_a_topic_event_reaches_each_subscriber_once_per_channel(
    platform, fanout_providers, sandbox, episode_type, service_client, capsys
):
    """SUBSCRIBERS subscribers among SUBSCRIBERS + 5,000 users. Everyone subscribed can be reached in-app,
    one in five by e-mail; one in 20 opted out of product updates, one in 20 muted everything, one in
    20 opted out of product e-mail only; the actor is excluded. Non-subscribers get nothing."""
    n = SUBSCRIBERS

    def document(i):
        product_off = {"categories": {"product": {"email": False, "inapp": False}}}
        return {1: product_off, 2: {"global_mute": True}, 3: {"categories": {"product": {"email": False}}}}.get(i % 20)

    ids = copy_users(n + 5000, document=document, email=lambda i: i % 5 == 0, tag="fan")
    subscribers = ids[:n]
    topic = make_topic(service_client, "show:e2e")
    started = time.monotonic()
    subscribe(service_client, topic.key, subscribers)
    subscribed_in = time.monotonic() - started
    actor = subscribers[0]
    email = {u for i, u in enumerate(subscribers) if i % 5 == 0 and i % 20 not in (1, 2, 3)} - {actor}
    inapp = {u for i, u in enumerate(subscribers) if i % 20 not in (1, 2)} - {actor}
    start_pipeline(platform, "--batch-size", "10000", channels=("email", "inapp"))
    accepted = publish(service_client, "episode-s1e2", topic.key, exclude=[str(actor)])
    t0 = time.monotonic()
    wait_for(
        lambda: (
            sandbox.client("sendgrid").stats()["accepted"] >= len(email) and InboxMessage.objects.count() >= len(inapp)
        ),
        timeout=300,
        interval=1.0,
        what="every eligible message sent",
    )
    elapsed = time.monotonic() - t0
    time.sleep(2.0)  # anything sent twice would show up now
    event = accepted["id"]
    sent = email_keys(sandbox)
    inbox = collections.Counter(InboxMessage.objects.values_list("notification_id", flat=True))
    assert set(sent) == {f"{event}:{u}:email" for u in email}
    assert set(inbox) == {f"{event}:{u}:inapp" for u in inapp}
    assert max(sent.values()) == 1 and max(inbox.values()) == 1, "nobody gets a message twice"
    body = next(iter(sandbox.client("sendgrid").iter_requests()))["body"]
    assert "New: S1E2" in orjson.dumps(body).decode(), "the type's template with the event's data"
    fanout = Campaign.objects.get(kind=CampaignKind.FANOUT)
    wait_for(lambda: Campaign.objects.get(pk=fanout.pk).state == CampaignState.COMPLETED, timeout=30, what="completed")
    fanout.refresh_from_db()
    assert fanout.audience_size == n - 1 and fanout.queued == len(email) + len(inapp)
    with capsys.disabled():
        print(
            f"\n[fanout e2e] {n} subscribers added through the API in {subscribed_in:.1f}s; one event: "
            f"{len(email)} e-mails and {len(inapp)} in-app messages in {elapsed:.1f}s, each exactly once"
        )


def test_unsubscribe_between_batches_and_a_repeated_event_id(
    platform, fanout_providers, sandbox, email_only, service_client
):
    ids = copy_users(3000, tag="unsub")
    topic = make_topic(service_client, "show:unsub")
    subscribe(service_client, topic.key, ids)
    start_pipeline(platform, "--batch-size", "300", "--max-pages-per-second", "4")
    accepted = publish(service_client, "unsub-1", topic.key)
    wait_for(
        lambda: CampaignLaunch.objects.filter(launch_id=accepted["id"], next_batch__gte=2).exists(),
        timeout=30,
        interval=0.05,
        what="a few batches emitted",
    )
    leaving = ids[-1000:]
    response = service_client.post(
        f"/api/v1/topics/{topic.key}/subscribers/remove", {"recipients": [str(u) for u in leaving]}, format="json"
    )
    assert response.json()["changed"] == 1000
    checkpoint = CampaignLaunch.objects.get(launch_id=accepted["id"]).last_user_id
    assert checkpoint < leaving[0], "the removal happened between batches, before their page"
    staying = ids[:-1000]
    wait_for(lambda: len(email_keys(sandbox)) >= len(staying), timeout=90, interval=0.5, what="every e-mail sent")
    wait_for(
        lambda: Campaign.objects.get(launch_id=accepted["id"]).state == CampaignState.COMPLETED,
        timeout=30,
        what="completed",
    )
    again = publish(service_client, "unsub-1", topic.key)
    assert again["duplicate"] is True and again["id"] == accepted["id"]
    time.sleep(3.0)
    sent = email_keys(sandbox)
    assert set(sent) == {f"{accepted['id']}:{u}:email" for u in staying}, "the unsubscribed got nothing"
    assert max(sent.values()) == 1
    assert Campaign.objects.filter(kind=CampaignKind.FANOUT).count() == 1, "a repeat fans out nothing"


def test_cancel_stops_further_sends(platform, fanout_providers, sandbox, email_only, service_client, marketer):
    ids = copy_users(8000, tag="cancel")
    topic = make_topic(service_client, "show:cancel")
    subscribe(service_client, topic.key, ids)
    start_pipeline(platform)
    accepted = publish(service_client, "cancel-1", topic.key)
    client = sandbox.client("sendgrid")
    wait_for(lambda: client.stats()["accepted"] >= 600, timeout=60, interval=0.05, what="sending")
    fanout = Campaign.objects.get(launch_id=accepted["id"])
    services.campaign_cancel(campaign_id=fanout.pk, user=marketer)
    at_cancel = client.stats()["accepted"]
    time.sleep(4.0)  # a worker's batch in hand (up to WORKER_BATCH_SIZE) passed the halt check already
    settled = client.stats()["accepted"]
    time.sleep(2.5)
    assert client.stats()["accepted"] == settled, "nothing is sent after the cancel settled"
    assert settled - at_cancel <= 1500 and settled < len(ids)
    fanout.refresh_from_db()
    assert fanout.state == CampaignState.CANCELLED


def test_orchestrator_killed_mid_fanout_and_restarted(platform, fanout_providers, sandbox, email_only, service_client):
    ids = copy_users(6000, tag="fkill")
    topic = make_topic(service_client, "show:kill")
    subscribe(service_client, topic.key, ids)
    args = ("--batch-size", "300", "--max-pages-per-second", "5")  # 20 pages over about 4 s
    start_pipeline(platform, *args)
    accepted = publish(service_client, "kill-1", topic.key)
    wait_for(
        lambda: CampaignLaunch.objects.filter(launch_id=accepted["id"], next_batch__gte=4).exists(),
        timeout=30,
        interval=0.05,
        what="a few batches emitted",
    )
    platform.kill("orchestrator")
    at_kill = CampaignLaunch.objects.get(launch_id=accepted["id"]).next_batch
    assert at_kill < 20, "killed mid-fanout"
    time.sleep(1.0)
    platform.orchestrator(*args)
    wait_for(lambda: len(email_keys(sandbox)) >= len(ids), timeout=90, interval=0.5, what="every e-mail sent")
    time.sleep(2.0)
    sent = email_keys(sandbox)
    assert set(sent) == {f"{accepted['id']}:{u}:email" for u in ids}, "nobody missed"
    assert max(sent.values()) == 1, "nobody twice"
    numbers = collections.Counter(
        orjson.loads(m.value())["batch"]
        for m in consume(channel_topic("email", "batch"), expected=20, timeout=10, idle=1.0)
    )
    assert sorted(numbers) == list(range(20))
