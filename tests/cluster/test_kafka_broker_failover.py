"""A Kafka broker SIGKILLed while events stream through relay, dispatcher and worker: its partitions get
new leaders, and every accepted event is sent exactly once (counted at the provider sandbox)."""

from __future__ import annotations

import collections
import os
import time

import pytest
from confluent_kafka.admin import AdminClient
from django.conf import settings

from notifications.bus.config import admin_config
from notifications.bus.topics import delivery_topic, events_topic
from notifications.models import NotificationTemplate, NotificationType, Provider
from notifications.outbox.services import EventInput, publish_events
from tests.campaigns.conftest import copy_users
from tests.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

EVENTS = int(os.environ.get("CLUSTER_TEST_EVENTS", "3000"))
BATCH = 50  # events per publish: one outbox transaction each
USERS = 300


def leaders(topics: list[str]) -> collections.Counter:
    """Partitions led per broker id (-1: no leader) across `topics`."""
    metadata = AdminClient(admin_config()).list_topics(timeout=10).topics
    return collections.Counter(p.leader for t in topics for p in metadata[t].partitions.values())


def test_a_broker_killed_under_load_loses_no_accepted_event_and_sends_none_twice(
    platform, sandbox, cluster_processes, capsys
):
    assert settings.KAFKA_REPLICATION_FACTOR == 3
    order = NotificationType.objects.create(key="order.shipped", name="Order shipped", default_channels=["email"])
    NotificationTemplate.objects.create(notification_type=order, channel="email", subject="Order {{ n }}", body="x")
    Provider.objects.create(name="sendgrid", channel="email", kind="sendgrid", rate=5000, burst=100)
    client = sandbox.client("sendgrid")
    client.reset(config=True)
    client.configure(rate=10_000, burst=10_000, latency={"kind": "uniform", "min_ms": 2, "max_ms": 10})
    users = copy_users(USERS)
    platform.start("dispatcher", "run_dispatcher")
    platform.start("worker", "run_worker", "--channel", "email")
    time.sleep(4.0)  # the consumers join their groups

    topics = [events_topic(), delivery_topic("email")]
    victim = leaders(topics).most_common(1)[0][0]
    expected: set[str] = set()
    killed_at = None
    started = time.monotonic()
    for start in range(0, EVENTS, BATCH):
        events = [
            EventInput(type="order.shipped", recipients=[str(users[i % USERS])], data={"n": i}, event_id=f"ord-{i}")
            for i in range(start, min(start + BATCH, EVENTS))
        ]
        for event, result in zip(events, publish_events(events=events, service="orders"), strict=True):
            expected.add(f"{result.id}:{event.recipients[0]}:email")  # accepted: it must be sent
        if killed_at is None and start >= EVENTS // 3:
            cluster_processes.kill_kafka_broker(victim)
            killed_at = time.monotonic()
        time.sleep(0.02)
    published = time.monotonic()

    # The killed broker is fenced: every partition it led has a new leader.
    wait_for(lambda: leaders(topics)[victim] == 0 and leaders(topics)[-1] == 0, timeout=30, what="leaders moved")
    moved = time.monotonic() - killed_at
    wait_for(lambda: client.stats()["accepted"] >= len(expected), timeout=240, interval=0.5, what="every event sent")
    done = time.monotonic()
    time.sleep(3.0)  # anything sent twice would show up now

    sent = collections.Counter(r["idempotency_keys"][0] for r in client.iter_requests())
    lost, twice = expected - set(sent), {k for k, n in sent.items() if n > 1}
    with capsys.disabled():
        print(
            f"\n[kafka failover] {len(expected)} events, broker {victim} SIGKILLed after "
            f"{killed_at - started:.1f} s, leaders moved within {moved:.1f} s; published in "
            f"{published - started:.1f} s, all sent after {done - started:.1f} s; lost {len(lost)}, twice {len(twice)}"
        )
    assert not lost, f"{len(lost)} accepted events never sent"
    assert not twice, f"{len(twice)} sent twice"
    assert set(sent) == expected
