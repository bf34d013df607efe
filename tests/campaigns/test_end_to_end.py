"""Campaigns end to end on the real services: outbox relay, orchestrator, batch expander and channel
workers as separate processes, the provider sandboxes counting what was really sent.

Sends are counted at the sandboxes (the ground truth); the 50k test also checks the campaign's own
progress counters, which the workers feed through ``campaigns.progress.record_outcomes``.
"""

import collections
import time
import uuid

import orjson
import pytest
from confluent_kafka import Producer

from campaigns import services
from campaigns.models import Campaign, CampaignLaunch, CampaignState
from campaigns.progress import progress_snapshot
from notifications.bus.config import producer_config
from notifications.bus.topics import channel_topic
from notifications.dispatch.messages import channel_message
from notifications.models import Provider
from preferences.models import InboxMessage
from tests.campaigns.conftest import copy_users, make_campaign
from tests.campaigns.helpers import keys
from tests.kafka_helpers import consume
from tests.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

UNSUBSCRIBED = {"categories": {"marketing": dict.fromkeys(("email", "push", "sms", "inapp", "webhook"), False)}}


def token_for(uid: int, platform_: str) -> str:
    return f"e2e-{uid}-{platform_}".ljust(64, "0")  # as tests.campaigns.conftest.copy_users makes them


def launch(campaign, user) -> Campaign:
    services.campaign_launch(campaign_id=campaign.pk, user=user)
    campaign.refresh_from_db()
    return campaign


def test_fifty_thousand_users_each_get_exactly_one_message_per_channel(
    platform, providers, sandbox, promo_type, marketer, capsys
):
    """50,000 users, three channels. Every user can be reached in-app; 30% have an e-mail address and 22%
    a push device (keeps the HTTP sends, which the 2-core test machine does at a few hundred per second,
    to ~14k while the audience, its pages and batches are the full 50k). One user in 20 opted out of
    marketing e-mail, one unsubscribed from marketing, one muted everything."""
    n = 50_000

    def document(i):
        return (
            {"categories": {"marketing": {"email": False}}}
            if i % 20 == 0
            else UNSUBSCRIBED
            if i % 20 == 1
            else {"global_mute": True}
            if i % 20 == 2
            else None
        )

    def device(i):
        return "fcm" if i % 10 in (1, 2) else "apns" if i % 40 == 7 else None

    def has_email(i):
        return i % 10 in (0, 1, 2)

    started = time.monotonic()
    ids = copy_users(
        n,
        document=document,
        device=device,
        email=has_email,
        tag="e2e",
        attributes={"cohort": "e2e"},
        locale=lambda i: "de" if i % 3 == 0 else "en",
    )
    loaded = time.monotonic() - started
    blocked = (1, 2)  # unsubscribed, muted: nothing on any channel
    email = {uid for i, uid in enumerate(ids) if has_email(i) and i % 20 not in (0, *blocked)}
    push = {uid: device(i) for i, uid in enumerate(ids) if device(i) and i % 20 not in blocked}
    inapp = {uid for i, uid in enumerate(ids) if i % 20 not in blocked}
    campaign = make_campaign(
        promo_type,
        channels=["email", "push", "inapp"],
        audience={"all": [{"field": "attributes.cohort", "op": "eq", "value": "e2e"}]},
        copies={("email", "de"): {"subject": "Frühlingsangebot", "body": "20 % Rabatt"}},
    )
    Provider.objects.create(name="inapp", channel="inapp", kind="inapp", rate=20000, burst=2000)
    platform.orchestrator("--batch-size", "10000")
    platform.start("expander", "run_batch_expander")
    for channel in ("email", "push", "inapp"):
        platform.start(f"worker_{channel}", "run_worker", "--channel", channel)
    campaign = launch(campaign, marketer)
    t0 = time.monotonic()

    def pushes():
        return sandbox.client("fcm").stats()["accepted"] + sandbox.client("apns").stats()["accepted"]

    wait_for(
        lambda: (
            sandbox.client("sendgrid").stats()["accepted"] >= len(email)
            and pushes() >= len(push)
            and InboxMessage.objects.count() >= len(inapp)
        ),
        timeout=240,
        interval=1.0,
        what="every eligible message sent",
    )
    elapsed = time.monotonic() - t0
    time.sleep(2.0)  # anything sent twice would show up now
    email_keys = keys(sandbox, "sendgrid")
    # Push sandboxes record the device token (APNs ids are UUIDs derived from the message id).
    tokens = collections.Counter(
        r["recipient"] for name in ("fcm", "apns") for r in sandbox.client(name).iter_requests()
    )
    inbox = collections.Counter(InboxMessage.objects.values_list("notification_id", flat=True))
    assert set(email_keys) == {f"{campaign.launch_id}:{uid}:email" for uid in email}
    assert set(tokens) == {token_for(uid, platform_) for uid, platform_ in push.items()}
    assert set(inbox) == {f"{campaign.launch_id}:{uid}:inapp" for uid in inapp}
    assert max(email_keys.values()) == 1 and max(tokens.values()) == 1, "nobody gets a message twice"
    assert len(email) == 7500 and len(push) == 6250 and len(inapp) == 45000  # the spec above, checked
    german_user = next(uid for i, uid in enumerate(ids) if uid in email and i % 3 == 0)
    german = next(
        r
        for r in sandbox.client("sendgrid").iter_requests()
        if r["idempotency_keys"][0] == f"{campaign.launch_id}:{german_user}:email"
    )
    assert "Frühlingsangebot" in orjson.dumps(german["body"]).decode()
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.COMPLETED,
        timeout=20,
        what="campaign completed",
    )
    delivered = len(email) + len(push) + len(inapp)
    # The workers count outcomes through campaigns.progress.record_outcomes; the orchestrator flushes them.
    wait_for(lambda: Campaign.objects.get(pk=campaign.pk).sent == delivered, timeout=20, what="progress flushed")
    snapshot = progress_snapshot(Campaign.objects.get(pk=campaign.pk))
    assert (snapshot["sent"], snapshot["failed"], snapshot["deduplicated"]) == (delivered, 0, 0)
    assert snapshot["percent"] == 100.0 and snapshot["batches_emitted"] == 15
    campaign.refresh_from_db()
    launch_row = CampaignLaunch.objects.get(launch_id=campaign.launch_id)
    assert campaign.audience_size == n and launch_row.next_batch == 5
    assert campaign.queued == delivered
    assert campaign.suppressed == 3 * n - delivered
    with capsys.disabled():
        print(
            f"\n[campaign e2e] {n} users COPYed in {loaded:.1f}s; {len(email)} e-mails, {len(push)} pushes and "
            f"{len(inapp)} in-app messages sent in {elapsed:.1f}s, each exactly once; "
            f"{3 * n - delivered} (user, channel) pairs suppressed"
        )


def test_orchestrator_killed_mid_campaign_and_restarted(platform, providers, sandbox, promo_type, marketer, capsys):
    ids = copy_users(6000, attributes={"cohort": "kill"})
    campaign = make_campaign(
        promo_type, channels=["email"], audience={"all": [{"field": "attributes.cohort", "op": "eq", "value": "kill"}]}
    )
    args = ("--batch-size", "300", "--max-pages-per-second", "5")  # 20 pages over about 4 s
    platform.orchestrator(*args)
    platform.start("expander", "run_batch_expander", "--channel", "email")
    platform.start("worker_email", "run_worker", "--channel", "email")
    campaign = launch(campaign, marketer)
    wait_for(
        lambda: CampaignLaunch.objects.filter(launch_id=campaign.launch_id, next_batch__gte=4).exists(),
        timeout=30,
        interval=0.05,
        what="a few batches emitted",
    )
    platform.kill("orchestrator")
    at_kill = CampaignLaunch.objects.get(launch_id=campaign.launch_id).next_batch
    assert at_kill < 20, "killed mid-campaign"
    time.sleep(1.0)
    platform.orchestrator(*args)
    wait_for(
        lambda: sandbox.client("sendgrid").stats()["accepted"] >= len(ids),
        timeout=90,
        interval=0.5,
        what="every e-mail sent",
    )
    time.sleep(2.0)
    sent = keys(sandbox, "sendgrid")
    assert set(sent) == {f"{campaign.launch_id}:{uid}:email" for uid in ids}, "nobody missed"
    assert max(sent.values()) == 1, "nobody twice"
    numbers = collections.Counter(
        orjson.loads(m.value())["batch"]
        for m in consume(channel_topic("email", "batch"), expected=20, timeout=10, idle=1.0)
    )
    assert sorted(numbers) == list(range(20))
    assert sum(numbers.values()) - 20 <= 1, f"at most the page in hand at the kill is emitted twice: {numbers}"
    with capsys.disabled():
        print(
            f"\n[orchestrator SIGKILL] killed after batch {at_kill} of 20; re-emitted "
            f"{sum(numbers.values()) - 20} batch(es); {len(ids)} e-mails, 0 missing, 0 twice"
        )


def test_progress_counts_what_the_provider_accepted_after_a_worker_is_killed(
    platform, providers, sandbox, promo_type, marketer, capsys
):
    """One of two e-mail workers is SIGKILLed mid-campaign and restarted: the campaign's ``sent`` equals
    the messages the provider accepted, each counted once (a send confirmed but not yet settled when
    the worker died is counted by the confirm itself, not lost as a "deduplicated" redelivery)."""
    Provider.objects.filter(name="sendgrid").update(rate=800, burst=1, transactional_reserve=0)
    ids = copy_users(5000, attributes={"cohort": "wkill"})
    campaign = make_campaign(
        promo_type, channels=["email"], audience={"all": [{"field": "attributes.cohort", "op": "eq", "value": "wkill"}]}
    )
    platform.env["PROVIDER_TIMEOUT"] = "1"  # dedup leases of 18 s: the dead worker's claims expire within the test
    platform.orchestrator()
    platform.start("expander", "run_batch_expander", "--channel", "email")
    worker = ("run_worker", "--channel", "email")
    platform.start("worker_a", *worker)
    platform.start("worker_b", *worker)
    campaign = launch(campaign, marketer)
    client = sandbox.client("sendgrid")
    wait_for(lambda: client.stats()["accepted"] >= 1500, timeout=60, interval=0.05, what="campaign under way")
    platform.kill("worker_a")
    at_kill = client.stats()["accepted"]
    platform.start("worker_a", *worker)
    wait_for(lambda: len(keys(sandbox, "sendgrid")) >= len(ids), timeout=120, interval=0.5, what="every e-mail sent")
    time.sleep(2.0)
    accepted = keys(sandbox, "sendgrid")
    assert set(accepted) == {f"{campaign.launch_id}:{uid}:email" for uid in ids}, "nobody missed"
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).sent == len(accepted),
        timeout=30,
        what=f"progress flushed: sent == {len(accepted)} accepted",
    )
    snapshot = progress_snapshot(Campaign.objects.get(pk=campaign.pk))
    assert (snapshot["sent"], snapshot["failed"]) == (len(ids), 0)
    twice = sum(n - 1 for n in accepted.values())
    with capsys.disabled():
        print(
            f"\n[worker SIGKILL mid-campaign] killed at {at_kill} of {len(ids)} sent; "
            f"progress sent {snapshot['sent']}, "
            f"provider accepted {len(accepted)} distinct ({twice} twice: in flight at the kill), "
            f"deduplicated redeliveries {snapshot['deduplicated']}"
        )


def throttled_campaign(promo_type, n, cohort, throttle):
    ids = copy_users(n, attributes={"cohort": cohort})
    campaign = make_campaign(
        promo_type,
        channels=["email"],
        throttle=throttle,
        audience={"all": [{"field": "attributes.cohort", "op": "eq", "value": cohort}]},
    )
    return ids, campaign


def start_pipeline(platform):
    platform.orchestrator()
    platform.start("expander", "run_batch_expander", "--channel", "email")
    platform.start("worker_email", "run_worker", "--channel", "email")


def test_pause_and_resume(platform, providers, sandbox, promo_type, marketer):
    ids, campaign = throttled_campaign(promo_type, 3000, "pause", throttle=300)
    start_pipeline(platform)
    campaign = launch(campaign, marketer)
    client = sandbox.client("sendgrid")
    wait_for(lambda: client.stats()["accepted"] >= 600, timeout=60, interval=0.05, what="sending")
    services.campaign_pause(campaign_id=campaign.pk, user=marketer)
    at_pause = client.stats()["accepted"]
    time.sleep(2.5)  # messages already released to the workers (≈ one pacing chunk) still go out
    settled = client.stats()["accepted"]
    time.sleep(2.0)
    assert client.stats()["accepted"] == settled, "nothing is sent while paused"
    assert settled - at_pause <= 400, f"a pause takes effect within the pacing lead ({settled - at_pause} after)"
    assert settled < len(ids)
    services.campaign_resume(campaign_id=campaign.pk, user=marketer)
    wait_for(lambda: client.stats()["accepted"] >= len(ids), timeout=60, interval=0.25, what="all sent after resume")
    time.sleep(1.0)
    sent = keys(sandbox, "sendgrid")
    assert len(sent) == len(ids) and max(sent.values()) == 1
    stats = client.stats()
    assert stats["max_1s_window"] <= 300 + 30 + 30, f"the campaign throttle holds: {stats['max_1s_window']}/s"
    wait_for(
        lambda: Campaign.objects.get(pk=campaign.pk).state == CampaignState.COMPLETED, timeout=20, what="completed"
    )


def test_cancel_stops_further_sends(platform, providers, sandbox, promo_type, marketer):
    ids, campaign = throttled_campaign(promo_type, 3000, "cancel", throttle=300)
    start_pipeline(platform)
    campaign = launch(campaign, marketer)
    client = sandbox.client("sendgrid")
    wait_for(lambda: client.stats()["accepted"] >= 600, timeout=60, interval=0.05, what="sending")
    services.campaign_cancel(campaign_id=campaign.pk, user=marketer)
    at_cancel = client.stats()["accepted"]
    time.sleep(2.5)
    settled = client.stats()["accepted"]
    time.sleep(2.5)
    assert client.stats()["accepted"] == settled, "nothing is sent after the cancel settled"
    assert settled - at_cancel <= 400 and settled < len(ids)
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.CANCELLED and campaign.finished_at


def test_transactional_messages_are_not_held_behind_a_running_campaign(
    platform, providers, sandbox, promo_type, marketer, capsys
):
    Provider.objects.filter(name="sendgrid").update(rate=500, burst=100, transactional_reserve=50)
    ids = copy_users(6000, attributes={"cohort": "busy"})
    campaign = make_campaign(
        promo_type, channels=["email"], audience={"all": [{"field": "attributes.cohort", "op": "eq", "value": "busy"}]}
    )
    start_pipeline(platform)
    campaign = launch(campaign, marketer)
    client = sandbox.client("sendgrid")
    wait_for(lambda: client.stats()["accepted"] >= 1500, timeout=60, interval=0.1, what="campaign under way")
    message = channel_message(
        event_id=str(uuid.uuid4()),
        user_id=1,
        channel="email",
        type="auth.password_reset",
        category="security",
        urgency="urgent",
        priority="transactional",
        created_at="2026-11-25T10:00:00+00:00",
        locale="en",
        to={"email": "reset@example.com"},
        content={"subject": "Reset your password", "body": "https://example.com/reset"},
    )
    producer = Producer(producer_config())
    sent_at = time.monotonic()
    producer.produce(
        channel_topic("email"),
        key=b"1",
        value=orjson.dumps(message),
        headers=[("idempotency-key", message["id"].encode())],
    )
    assert producer.flush(10) == 0
    wait_for(
        lambda: client.requests(recipient="reset@example.com"),
        timeout=30,
        interval=0.05,
        what="the password reset delivered",
    )
    latency = time.monotonic() - sent_at
    backlog = len(ids) - client.stats()["accepted"]
    with capsys.disabled():
        print(
            f"\n[transactional during campaign] password reset delivered in {latency:.2f}s with {backlog} campaign "
            f"e-mails still to send at 500/s ({backlog / 500:.0f}s of campaign work)"
        )
    assert backlog > 1000, "the campaign was still running"
    assert latency < 4.0, f"the reset waited {latency:.1f}s behind the campaign"
