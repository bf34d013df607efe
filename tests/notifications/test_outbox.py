"""The transactional outbox and its relay, against real PostgreSQL and Kafka."""

import collections
import signal
import subprocess
import sys
import time

import orjson
import pytest
from django.db import transaction

from notifications import publish
from notifications.bus.config import producer_config
from notifications.bus.topics import events_topic, topic_name
from notifications.models import Category, NotificationType, OutboxEvent, Urgency
from notifications.outbox.relay import REBALANCE_INTERVAL, OutboxRelay, RelayConfig, conninfo_from_django
from notifications.outbox.services import OutboxMessage, enqueue_messages
from notifications.priority import Lane
from tests.kafka_helpers import consume, consume_matching
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def few_buckets(settings):
    settings.OUTBOX_BUCKETS = 16  # rows and relays must agree on the bucket count


def make_relay(**overrides) -> OutboxRelay:
    from django.conf import settings

    config = RelayConfig(
        conninfo=conninfo_from_django(), producer_config=producer_config(), buckets=settings.OUTBOX_BUCKETS
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return OutboxRelay(config)


def test_rollback_publishes_nothing(notification_type):
    with pytest.raises(RuntimeError), transaction.atomic():
        publish(type="order.shipped", recipients=[1, 2], data={"n": 1}, event_id="rolled-back")
        assert OutboxEvent.objects.count() == 2  # visible inside the transaction…
        raise RuntimeError("caller fails after publishing")
    assert OutboxEvent.objects.count() == 0  # …and gone with it


def test_publish_commits_one_row_per_recipient_with_envelope(notification_type):
    with transaction.atomic():
        result = publish(type="order.shipped", recipients=[7, 8], data={"order": "A1"}, event_id="e-1")
    rows = list(OutboxEvent.objects.order_by("id"))
    assert [r.key for r in rows] == ["7", "8"]
    assert rows[0].topic == topic_name("events")
    envelope = rows[0].payload_json
    assert envelope["v"] == 1 and envelope["id"] == str(result.id) and envelope["type"] == "order.shipped"
    assert envelope["data"] == {"order": "A1"} and envelope["recipient"] == "7"
    assert rows[0].headers_json["idempotency-key"] == f"{result.id}:7"
    assert envelope["accepted_at"] == result.accepted_at.isoformat(), "the delivery log's day comes from it"


def test_publish_is_idempotent_by_event_id(notification_type):
    first = publish(type="order.shipped", recipients=[1], event_id="same")
    again = publish(type="order.shipped", recipients=[1], event_id="same")
    assert again.id == first.id and again.duplicate and not first.duplicate
    assert again.accepted_at == first.accepted_at
    assert OutboxEvent.objects.count() == 1


def test_idle_relay_wakes_on_notify(notification_type, running):
    """With a 30 s poll interval, only the NOTIFY trigger can make the relay forward this quickly."""
    with running(make_relay(poll_interval=30.0)):
        time.sleep(0.5)  # let it go idle, waiting on LISTEN
        result = publish(type="order.shipped", recipients=[5], event_id="wake-up")
        messages = consume_matching(
            topic_name("events"), lambda m: orjson.loads(m.value())["id"] == str(result.id), expected=1, timeout=30
        )
        assert len(messages) == 1
    assert OutboxEvent.objects.count() == 0


def test_two_concurrent_relays_deliver_every_row_once_in_order_per_key(fresh_topic, running):
    topic = fresh_topic
    keys = [f"user-{i}" for i in range(40)]
    total = 4000
    relays = [make_relay(batch_size=100), make_relay(batch_size=100)]
    with running(relays[0]), running(relays[1]):
        # A relay that connects first may count only itself and take every bucket; the next rebalance
        # (every REBALANCE_INTERVAL) hands half to its peer. Write only once both serve a share, so
        # the rows below really are relayed by two relays at once.
        wait_for(
            lambda: [sorted(map(len, r.owned.values())) for r in relays] == [[8, 8], [8, 8]],
            timeout=4 * REBALANCE_INTERVAL + 5,
            what="two relays owning 8 buckets of each lane",
        )
        # Write while the relays run, in many small transactions, as producers would.
        for start in range(0, total, 200):
            with transaction.atomic():
                enqueue_messages(
                    OutboxMessage(topic=topic, key=keys[i % len(keys)], payload={"seq": i})
                    for i in range(start, start + 200)
                )
        messages = consume(topic, expected=total, timeout=60, idle=1.0)
        owned = [len(r.owned[0]) for r in relays]
    seqs = [orjson.loads(m.value())["seq"] for m in messages]
    assert sorted(seqs) == list(range(total)), "every row exactly once"
    per_key = collections.defaultdict(list)
    for m in messages:
        per_key[m.key().decode()].append(orjson.loads(m.value())["seq"])
    for key, key_seqs in per_key.items():
        assert key_seqs == sorted(key_seqs), f"order broken for {key}"
    assert sorted(owned) == [8, 8], f"buckets were not shared: {owned}"
    assert OutboxEvent.objects.count() == 0


def test_relay_killed_mid_batch_loses_nothing(subprocess_env, capsys, fresh_topic):
    topic = fresh_topic
    total = 30_000
    with transaction.atomic():
        enqueue_messages(
            OutboxMessage(topic=topic, key=f"k{i % 100}", payload={"seq": i, "pad": "x" * 200}) for i in range(total)
        )
    cmd = [sys.executable, "manage.py", "relay_outbox", "--batch-size", "500"]
    first = subprocess.Popen(cmd, env=subprocess_env)
    try:
        deadline = time.monotonic() + 60
        while OutboxEvent.objects.count() > total * 0.7 and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)  # no chance to finish the batch or clean up
        first.wait(10)
    finally:
        first.kill()
    left = OutboxEvent.objects.count()
    assert 0 < left < total, f"the kill should land mid-run, {left} rows left"
    second = subprocess.Popen(cmd, env=subprocess_env)
    try:
        messages = consume(topic, expected=total, timeout=90, idle=1.0)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0, "SIGTERM is a clean stop"
    counts = collections.Counter(orjson.loads(m.value())["seq"] for m in messages)
    missing = set(range(total)) - set(counts)
    duplicates = sum(c - 1 for c in counts.values())
    with capsys.disabled():
        print(
            f"\n[relay SIGKILL] {total} rows, {left} left at kill, missing={len(missing)}, "
            f"redelivered duplicates={duplicates}"
        )
    assert not missing
    assert OutboxEvent.objects.count() == 0


def test_a_row_the_broker_refuses_for_good_is_kept_aside_and_does_not_block(fresh_topic, running):
    from notifications.models import OutboxFailure
    from notifications.outbox.relay import RELAY_PRODUCER_OVERRIDES

    with transaction.atomic():
        enqueue_messages([OutboxMessage(topic=f"{fresh_topic}-does-not-exist", key="k1", payload={"seq": -1})])
        enqueue_messages(OutboxMessage(topic=fresh_topic, key="k1", payload={"seq": i}) for i in range(5))
    with running(make_relay(producer_config=producer_config(**RELAY_PRODUCER_OVERRIDES))):
        messages = consume(fresh_topic, expected=5, timeout=40)
    assert sorted(orjson.loads(m.value())["seq"] for m in messages) == [0, 1, 2, 3, 4]
    [failure] = OutboxFailure.objects.all()
    assert failure.payload == {"seq": -1} and "UNKNOWN_TOPIC" in failure.error
    assert OutboxEvent.objects.count() == 0


def test_each_event_is_queued_in_the_lane_of_its_type(service_client):
    for key, category, urgency in [
        ("auth.otp", Category.SECURITY, Urgency.NORMAL),
        ("order.shipped", Category.TRANSACTIONAL, Urgency.NORMAL),
        ("social.mention", Category.SOCIAL, Urgency.URGENT),
        ("weekly.digest", Category.MARKETING, Urgency.URGENT),  # marketing is bulk whatever its urgency
        ("product.tips", Category.PRODUCT, Urgency.BULK),
    ]:
        NotificationType.objects.create(key=key, name=key, category=category, urgency=urgency)
    events = [
        {"event_id": key, "type": key, "recipients": ["1"]}
        for key in ("auth.otp", "order.shipped", "social.mention", "weekly.digest", "product.tips")
    ]
    response = service_client.post("/api/v1/events", {"events": events}, format="json")
    assert response.status_code == 202, response.content
    lanes = {r.payload_json["type"]: (r.topic, r.lane) for r in OutboxEvent.objects.all()}
    priority, bulk = (events_topic(), 0), (events_topic(Lane.BULK), 1)
    assert lanes == {
        "auth.otp": priority,
        "order.shipped": priority,
        "social.mention": priority,
        "weekly.digest": bulk,
        "product.tips": bulk,
    }


def test_the_relay_claims_priority_rows_before_any_bulk_backlog(topics):
    bulk_topic, priority_topic = events_topic(Lane.BULK), events_topic()
    enqueue_messages(OutboxMessage(topic=bulk_topic, key=f"u{i}", payload={"n": i}) for i in range(30))
    enqueue_messages([OutboxMessage(topic=priority_topic, key="u1", payload={"urgent": True})])
    assert OutboxEvent.objects.filter(lane=1).count() == 30, "the lane follows the topic name"
    relay = make_relay(batch_size=10, bulk_batch_size=4)
    relay._connect()
    try:
        relay.rebalance()
        assert relay.relay_batch() == 5, "every priority row (up to 10) and at most 4 bulk rows"
    finally:
        relay.close()
    left = set(OutboxEvent.objects.values_list("topic", flat=True))
    assert left == {bulk_topic}, "the priority row went out in the first batch, ahead of 30 older bulk rows"
    assert OutboxEvent.objects.count() == 26


def test_a_relay_per_lane_relays_its_own_lane_alone(topics):
    bulk_topic, priority_topic = events_topic(Lane.BULK), events_topic()
    enqueue_messages(OutboxMessage(topic=bulk_topic, key=f"u{i}", payload={"n": i}) for i in range(30))
    enqueue_messages(OutboxMessage(topic=priority_topic, key=f"u{i}", payload={"n": i}) for i in range(3))
    priority, bulk = make_relay(lanes=(0,), batch_size=10), make_relay(lanes=(1,), batch_size=10)
    for relay in (priority, bulk):
        relay._connect()
        relay.rebalance()
    try:
        assert priority.relay_batch() == 3 and priority.relay_batch() == 0, "priority rows only"
        assert OutboxEvent.objects.filter(lane=0).count() == 0
        assert bulk.relay_batch() == 10, "a bulk-only relay claims a whole batch of bulk rows"
        assert OutboxEvent.objects.filter(lane=1).count() == 20
    finally:
        priority.close()
        bulk.close()


def test_relays_share_each_lanes_buckets_among_the_relays_serving_it(running):
    relays = [make_relay(), make_relay(lanes=(0,)), make_relay(lanes=(1,))]
    with running(relays[0]), running(relays[1]), running(relays[2]):
        wait_for(
            lambda: [{lane: len(b) for lane, b in r.owned.items()} for r in relays] == [{0: 8, 1: 8}, {0: 8}, {1: 8}],
            timeout=4 * REBALANCE_INTERVAL + 5,
            what="each lane's 16 buckets split between its two relays",
        )
        owned = [{lane: set(b) for lane, b in r.owned.items()} for r in relays]
    assert owned[0][0].isdisjoint(owned[1][0]) and owned[0][1].isdisjoint(owned[2][1])


def test_a_relay_refuses_an_unknown_lane():
    with pytest.raises(ValueError, match="lanes must be"):
        make_relay(lanes=(2,))
