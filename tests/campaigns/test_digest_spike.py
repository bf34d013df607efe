"""A reduced Wednesday digest through the real pipeline: urgent codes keep flowing while a digest (as API
events, then as a campaign) is sent through one contract. The oracle: nothing lost, nothing twice,
every message in its lane, and a loose bound on urgent latency (the tight ratio is
`benchmarks/spike.py`'s job)."""

import collections
import statistics
import threading
import time
import uuid

import orjson
import pytest
from rest_framework.test import APIClient

from campaigns import services
from notifications.bus.topics import delivery_topic, events_topic
from notifications.models import ApiKey, Category, NotificationTemplate, NotificationType, Provider, Urgency
from notifications.outbox.envelope import platform_event_id
from notifications.priority import Lane
from tests.campaigns.conftest import copy_users, make_campaign
from tests.kafka_helpers import consume
from tests.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CONTRACT = 400  # e-mails/s, enforced by the sandbox over every rolling 1 s window
USERS = 2000
URGENT_RATE = 20  # one-time codes per second


@pytest.fixture
def digest_setup(db, sandbox):
    otp = NotificationType.objects.create(
        key="auth.otp", name="One-time code", category=Category.SECURITY, urgency=Urgency.URGENT
    )
    digest = NotificationType.objects.create(
        key="weekly.digest", name="Digest", category=Category.MARKETING, urgency=Urgency.BULK
    )
    for ntype in (otp, digest):
        NotificationTemplate.objects.create(notification_type=ntype, channel="email", subject="{{ n }}", body="x")
    Provider.objects.create(name="sendgrid", channel="email", kind="sendgrid", rate=CONTRACT, burst=1)
    client = sandbox.client("sendgrid")
    client.reset(config=True)
    client.configure(rate=CONTRACT, latency={"kind": "uniform", "min_ms": 5, "max_ms": 25})
    _key, raw = ApiKey.generate(service="spike")
    return digest, raw


class UrgentStream:
    """POSTs one urgent code per 1/URGENT_RATE s (open loop) to random users; remembers when each was posted."""

    def __init__(self, api_key: str, users: list[int]):
        self.api = APIClient()
        self.api.credentials(HTTP_AUTHORIZATION=f"Api-Key {api_key}")
        self.users = users
        self.posted: dict[str, tuple[float, str]] = {}  # message id → (posted at, phase)
        self.phase = "rest"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        try:
            start = time.monotonic()
            for i in range(1_000_000):
                if self.stop.wait(max(0.0, start + i / URGENT_RATE - time.monotonic())):
                    return
                user = self.users[i % len(self.users)]
                event_id = f"otp-{uuid.uuid4().hex}"
                posted_at = time.time()
                response = self.api.post(
                    "/api/v1/events",
                    {"event_id": event_id, "type": "auth.otp", "recipients": [str(user)], "data": {"n": i}},
                    format="json",
                )
                assert response.status_code == 202, response.content
                pid = platform_event_id(service="spike", producer_event_id=event_id)
                self.posted[f"{pid}:{user}:email"] = (posted_at, self.phase)
        finally:
            connection.close()


def test_urgent_codes_keep_flowing_through_a_digest_spike(platform, digest_setup, sandbox, marketer, capsys):
    digest, api_key = digest_setup
    users = copy_users(USERS)
    platform.start("dispatcher", "run_dispatcher")
    for name in ("worker_a", "worker_b"):
        platform.start(name, "run_worker", "--channel", "email")
    platform.orchestrator()
    platform.start("expander", "run_batch_expander", "--channel", "email")
    time.sleep(4.0)  # the consumers join their groups
    stream = UrgentStream(api_key, users)
    stream.thread.start()
    client = sandbox.client("sendgrid")
    time.sleep(3.0)

    stream.phase = "api digest"
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {api_key}")
    for start in range(0, USERS, 500):  # the cron job: one event per user, 500 events per request
        events = [
            {"event_id": f"digest-{uid}", "type": "weekly.digest", "recipients": [str(uid)], "data": {"n": 1}}
            for uid in users[start : start + 500]
        ]
        assert api.post("/api/v1/events", {"events": events}, format="json").status_code == 202
    digest_ids = {f"{platform_event_id(service='spike', producer_event_id=f'digest-{u}')}:{u}:email" for u in users}
    wait_for(lambda: _sent(client) >= len(digest_ids), timeout=60, interval=0.5, what="the API digest sent")

    stream.phase = "campaign"
    campaign = make_campaign(digest, channels=["email"])
    services.campaign_launch(campaign_id=campaign.pk, user=marketer)
    campaign.refresh_from_db()
    campaign_ids = {f"{campaign.launch_id}:{u}:email" for u in [*users, marketer.pk]}
    wait_for(
        lambda: _sent(client) >= len(digest_ids) + len(campaign_ids), timeout=60, interval=0.5, what="campaign sent"
    )
    stream.phase = "after"
    time.sleep(2.0)
    stream.stop.set()
    stream.thread.join(10)
    time.sleep(2.0)  # the last codes arrive; anything sent twice would show now

    records = {r["idempotency_keys"][0]: r for r in client.iter_requests()}
    sent = collections.Counter(r["idempotency_keys"][0] for r in client.iter_requests())
    expected = digest_ids | campaign_ids | set(stream.posted)
    assert set(sent) == expected, f"lost {len(expected - set(sent))}, unexpected {len(set(sent) - expected)}"
    assert max(sent.values()) == 1, "nothing sent twice"
    stats = client.stats()
    assert stats["rate_limited"] == 0 and stats["max_1s_window"] <= CONTRACT

    # Every message travelled in its lane, on the events topics and on the channel topics.
    def ids_in(topic: str, expected: int) -> set[str]:
        return {_message_id(m) for m in consume(topic, expected=expected, timeout=30, idle=1.0)}

    assert ids_in(delivery_topic("email"), len(stream.posted)) == set(stream.posted)
    assert ids_in(delivery_topic("email", Lane.BULK), len(digest_ids | campaign_ids)) == digest_ids | campaign_ids
    events = consume(events_topic(), expected=len(stream.posted), timeout=30, idle=1.0)
    assert {orjson.loads(m.value())["type"] for m in events} == {"auth.otp"}
    bulk_events = consume(events_topic(Lane.BULK), expected=len(digest_ids), timeout=30, idle=1.0)
    assert {orjson.loads(m.value())["type"] for m in bulk_events} == {"weekly.digest"} and len(bulk_events) == USERS

    latency: dict[str, list[float]] = collections.defaultdict(list)
    for key, (posted_at, phase) in stream.posted.items():
        latency[phase].append(records[key]["t_wall"] - posted_at)
    summary = {phase: (statistics.median(v), _p99(v), len(v)) for phase, v in latency.items()}
    with capsys.disabled():
        print(
            "\n[spike] urgent codes, p50/p99 (n): "
            + ", ".join(
                f"{phase} {p50 * 1000:.0f}/{p99 * 1000:.0f} ms ({n})" for phase, (p50, p99, n) in summary.items()
            )
            + f"; {len(digest_ids)} API digest + {len(campaign_ids)} campaign e-mails at {CONTRACT}/s, "
            f"largest 1 s window {stats['max_1s_window']}, 429s {stats['rate_limited']}, 0 lost, 0 twice"
        )
    for phase in ("api digest", "campaign"):
        assert summary[phase][2] >= 20, f"the {phase} phase saw urgent codes"
        assert summary[phase][1] < 3.0, f"urgent p99 during the {phase}: {summary[phase][1]:.2f} s"


def _sent(client) -> int:
    return client.stats()["accepted"]


def _message_id(message) -> str:
    return orjson.loads(message.value())["id"]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
