"""Channel workers end to end: real Kafka and Redis, provider sandboxes speaking the real wire formats."""

import collections
import contextlib
import signal
import subprocess
import sys
import time
import uuid

import orjson
import pytest
import redis
from confluent_kafka import Producer
from django.conf import settings as django_settings

from notifications.bus.config import producer_config
from notifications.bus.topics import channel_topic, delivery_topic
from notifications.delivery.circuit_breaker import CircuitBreaker
from notifications.delivery.dedup import DedupStore
from notifications.delivery.wiring import DEDUP_FAIL_OPEN, build_worker_runner
from notifications.dispatch.messages import channel_message
from notifications.models import DeliveryLog, Provider
from notifications.priority import Lane
from preferences.models import Device, InboxMessage
from tests.kafka_helpers import consume_matching
from tests.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PROVIDERS = {
    "email": ("sendgrid", "sendgrid"),
    "sms": ("twilio", "twilio"),
    "webhook": ("webhook", "webhook"),
    "inapp": ("inapp", None),
}


@pytest.fixture
def providers(sandbox_providers):
    return sandbox_providers("sendgrid", "smtp", "twilio", "fcm", "apns", "webhook", "inapp")


def message(channel: str, *, to: dict, user_id: int = 1, priority: str = "transactional", content=None) -> dict:
    event_id = str(uuid.uuid4())
    default_content = {
        "email": {"subject": "Shipped", "body": "On its way"},
        "sms": {"body": "Shipped"},
        "push": {"title": "Shipped", "body": "On its way", "data": {"type": "order.shipped"}},
        "inapp": {"title": "Shipped", "body": "On its way", "data": {}},
        "webhook": {"payload": {"type": "order.shipped"}},
    }[channel]
    return channel_message(
        event_id=event_id,
        user_id=user_id,
        channel=channel,
        type="order.shipped",
        category="transactional",
        urgency="normal",
        priority=priority,
        created_at="2026-11-25T10:00:00+00:00",
        locale="en",
        to=to,
        content=content or default_content,
        platform=to["platform"] if channel == "push" else None,
    )


def produce(channel: str, messages: list[dict], lane: Lane = Lane.PRIORITY, producer: Producer | None = None) -> None:
    producer = producer or Producer(producer_config())
    for m in messages:
        producer.produce(
            delivery_topic(channel, lane),
            key=str(m["user_id"]).encode(),
            value=orjson.dumps(m),
            headers=[("idempotency-key", m["id"].encode())],
        )
    assert producer.flush(30) == 0


def worker(channel: str, **kwargs):
    """A channel worker's runner in its own consumer group (each test's worker sees its own messages)."""
    return build_worker_runner(channel, group=f"w-{uuid.uuid4().hex[:6]}", **kwargs)


def log_status(m: dict) -> str | None:
    row = DeliveryLog.objects.filter(event_id=m["event_id"], user_id=m["user_id"], channel=m["channel"]).first()
    return row.status if row else None


@pytest.mark.parametrize("channel", ["email", "sms", "webhook"])
def test_happy_path_http_channels(running, topics, providers, sandbox, channel):
    provider, sandbox_name = PROVIDERS[channel]
    to = {
        "email": {"email": "ada@example.com"},
        "sms": {"phone": "+4915112345678"},
        "webhook": {"url": f"{sandbox.url('webhook')}/hooks/orders"},
    }[channel]
    m = message(channel, to=to)
    with running(worker(channel)):
        produce(channel, [m])
        wait_for(lambda: log_status(m) == "sent")
    [request] = sandbox.client(sandbox_name).requests()
    assert request["idempotency_key"] == m["id"], "the stable notification id reaches the provider"
    row = DeliveryLog.objects.get(event_id=m["event_id"])
    assert row.provider == provider and row.attempts == 1 and row.provider_message_id


def test_happy_path_push_fcm_and_apns(running, topics, providers, sandbox):
    fcm = message("push", to={"platform": "fcm", "devices": [["fcm", "fcm-token-1"], ["fcm", "fcm-token-2"]]})
    apns = message("push", to={"platform": "apns", "devices": [["apns", "a" * 64]]})
    with running(worker("push")):
        produce("push", [fcm, apns])
        wait_for(lambda: log_status(fcm) == "sent" and log_status(apns) == "sent")
    assert sorted(r["recipient"] for r in sandbox.client("fcm").requests()) == ["fcm-token-1", "fcm-token-2"]
    assert [r["recipient"] for r in sandbox.client("apns").requests()] == ["a" * 64]


def test_apns_pushes_beyond_the_connection_streams_wait_outside_the_send_deadline(
    running, topics, providers, sandbox, settings
):
    """httpcore carries every APNs push on one HTTP/2 connection (100 streams at the sandbox); a push
    started beyond that waits there for a stream, inside the adapter's send deadline. The pipelined
    loop keeps every concurrency slot busy, so under load they were all APNs pushes: the deadline
    expired on pushes the sandbox had accepted meanwhile and the in-process retry sent them again
    (one token accepted 3 times in CI). Here 300 slots and 300 pushes meet 0.5 s of APNs latency and
    a 1.2 s deadline: waiting for a stream would take the third hundred past it."""
    settings.WORKER_CONCURRENCY = 300
    settings.APNS_TIMEOUT = 1.2  # the send deadline too (deadline_for)
    Provider.objects.filter(name="apns").update(rate=10000, burst=1000)
    client = sandbox.client("apns")
    client.configure(latency={"kind": "fixed", "ms": 500})
    batch = [
        message("push", to={"platform": "apns", "devices": [["apns", f"{i:064x}"]]}, user_id=i) for i in range(300)
    ]
    with running(worker("push")):
        produce("push", batch)
        with contextlib.suppress(AssertionError):  # the outcomes below say what went wrong
            wait_for(
                lambda: DeliveryLog.objects.filter(channel="push", status="sent").count() == len(batch),
                timeout=30,
                interval=0.25,
            )
        time.sleep(1.0)  # a late retry would show up now
        tokens = collections.Counter(r["recipient"] for r in client.iter_requests())
        outcomes = collections.Counter(DeliveryLog.objects.filter(channel="push").values_list("status", "attempts"))
    duplicates = sum(tokens.values()) - len(tokens)
    assert (len(tokens), duplicates) == (len(batch), 0), f"sent twice: {duplicates}; outcomes {dict(outcomes)}"
    assert outcomes == {("sent", 1): len(batch)}, "no send hit the deadline"


def test_happy_path_inapp_written_in_bulk(running, topics, providers, django_user_model):
    users = [django_user_model.objects.create(username=f"in{i}") for i in range(20)]
    batch = [message("inapp", to={"user_id": u.id}, user_id=u.id) for u in users]
    with running(worker("inapp")):
        produce("inapp", batch)
        wait_for(lambda: InboxMessage.objects.count() == 20)
    assert set(InboxMessage.objects.values_list("user_id", flat=True)) == {u.id for u in users}


def test_inapp_failures_go_through_the_retry_policy_and_reach_the_dlq(running, topics, providers, django_user_model):
    """An inbox row the database refuses (a NUL byte in its text) is dead-lettered with the reason;
    the good rows of the same batch are written."""
    user = django_user_model.objects.create(username="inbox-ok")
    good = message("inapp", to={"user_id": user.id}, user_id=user.id)
    orphan = message("inapp", to={"user_id": user.id}, user_id=user.id, content={"title": "a\x00b", "body": ""})
    with running(worker("inapp")):
        produce("inapp", [good, orphan])
        wait_for(lambda: log_status(orphan) == "dlq" and InboxMessage.objects.filter(user=user).exists())
    [dead] = consume_matching(channel_topic("inapp", "dlq"), lambda x: True, expected=1)
    headers = {k: v.decode() for k, v in dead.headers()}
    assert orjson.loads(dead.value())["id"] == orphan["id"]
    assert headers["error-class"] == "permanent" and "database_rejected" in headers["errors"]


def test_same_message_three_times_is_delivered_once(running, topics, providers, sandbox):
    m = message("sms", to={"phone": "+4915112340000"})
    with running(worker("sms")):
        produce("sms", [m, m, m])
        wait_for(lambda: log_status(m) == "sent")
        time.sleep(1.0)  # give any duplicate the chance to go out
    stats = sandbox.client("twilio").stats()
    assert stats["accepted"] == 1 and stats["duplicates"]["keys"] == 0


def test_a_database_outage_while_settling_is_ridden_out_without_sending_twice(
    running, topics, providers, sandbox, monkeypatch
):
    """The delivery-log write fails (the database is away) for a while: the worker keeps what it
    sent, takes nothing new, settles once the database answers, and commits; nothing is sent twice."""
    from django.db import OperationalError

    from notifications.delivery import wiring

    calls = {"failed": 0}
    real = wiring.record_delivery_outcomes

    def record(entries):
        if calls["failed"] < 4:
            calls["failed"] += 1
            raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")
        return real(entries)

    monkeypatch.setattr(wiring, "record_delivery_outcomes", record)
    first = [message("sms", to={"phone": f"+49151123{i:05d}"}) for i in range(5)]
    later = [message("sms", to={"phone": f"+49151124{i:05d}"}) for i in range(5)]
    runner = worker("sms")
    with running(runner):
        produce("sms", first)
        wait_for(lambda: calls["failed"] >= 1)
        produce("sms", later)
        wait_for(lambda: all(log_status(m) == "sent" for m in first + later), timeout=30)
        assert runner.outage.failures == 0
    assert calls["failed"] == 4
    stats = sandbox.client("twilio").stats()
    assert stats["accepted"] == 10 and stats["duplicates"]["keys"] == 0


def test_transient_5xx_is_retried_then_sent(running, topics, providers, sandbox):
    m = message("email", to={"email": f"fail5xx-2-{uuid.uuid4().hex[:6]}@example.com"})
    with running(worker("email")):
        produce("email", [m])
        wait_for(lambda: log_status(m) == "sent", timeout=30)
    row = DeliveryLog.objects.get(event_id=m["event_id"])
    assert row.attempts == 3, "two 503s, then the send that worked"
    assert sandbox.client("sendgrid").stats()["accepted"] == 1


def test_a_retry_waits_in_the_retry_tier_of_its_own_lane(running, topics, providers, sandbox, settings):
    settings.WORKER_IN_PROCESS_RETRIES = 0  # every retry goes through a retry tier
    transactional = message("email", to={"email": f"fail5xx-1-t{uuid.uuid4().hex[:6]}@example.com"})
    bulk = message("email", to={"email": f"fail5xx-1-b{uuid.uuid4().hex[:6]}@example.com"}, priority="bulk")
    with running(worker("email")):
        produce("email", [transactional])
        produce("email", [bulk], lane=Lane.BULK)
        wait_for(lambda: log_status(transactional) == "sent" and log_status(bulk) == "sent", timeout=30)
    for m, lane, other in ((transactional, Lane.PRIORITY, Lane.BULK), (bulk, Lane.BULK, Lane.PRIORITY)):

        def same(x, m=m):
            return orjson.loads(x.value())["id"] == m["id"]

        [parked] = consume_matching(delivery_topic("email", lane, "5s"), same, expected=1)
        assert dict(parked.headers())["attempt"] == b"1"
        assert consume_matching(delivery_topic("email", other, "5s"), same, expected=0, timeout=1) == []
    assert sandbox.client("sendgrid").stats()["accepted"] == 2


def test_permanent_400_goes_to_the_dlq_without_retry(running, topics, providers, sandbox):
    m = message("sms", to={"phone": "+15005550001"})  # Twilio's test number for an invalid 'To'
    with running(worker("sms")):
        produce("sms", [m])
        wait_for(lambda: log_status(m) == "dlq")
    [dead] = consume_matching(channel_topic("sms", "dlq"), lambda x: True, expected=1)
    headers = {k: v.decode() for k, v in dead.headers()}
    assert headers["error-class"] == "invalid_contact" and headers["attempt"] == "1"
    assert orjson.loads(headers["errors"])[0]["code"] == "21211"
    assert sandbox.client("twilio").stats()["errors"], "the provider saw exactly one try"
    assert sum(sandbox.client("twilio").stats()["errors"].values()) == 1


def test_unregistered_token_goes_to_dlq_and_deactivates_the_device(running, topics, providers, django_user_model):
    user = django_user_model.objects.create(username="gone")
    token = f"unregistered-{uuid.uuid4().hex}"
    device = Device.objects.create(user=user, platform="fcm", token=token)
    m = message("push", to={"platform": "fcm", "devices": [["fcm", token]]}, user_id=user.id)
    with running(worker("push")):
        produce("push", [m])
        wait_for(lambda: log_status(m) == "dlq")
    device.refresh_from_db()
    assert device.active is False


def test_rate_limit_storm_backs_off_without_losing_or_duplicating(running, topics, providers, sandbox):
    """The provider's real contract (20/s) is below what we configured (200/s): it answers 429s.
    The worker must hold the bucket until the reset, lose nothing, send nothing twice."""
    Provider.objects.filter(name="twilio").update(rate=200, burst=20)
    client = sandbox.client("twilio")
    client.configure(rate=20, burst=20)
    batch = [message("sms", to={"phone": f"+49151{i:07d}"}) for i in range(120)]
    with running(worker("sms")):
        produce("sms", batch)
        wait_for(lambda: client.stats()["accepted"] >= 120, timeout=60)
        time.sleep(1.0)
    stats = client.stats()
    assert stats["accepted"] == 120 and stats["duplicates"]["keys"] == 0
    assert stats["max_1s_window"] <= 20
    assert stats["rate_limited"] < len(batch), f"no retry storm: {stats['rate_limited']} 429s for 120 messages"


def test_failover_to_the_next_provider_when_the_primary_circuit_opens(running, topics, providers, sandbox, settings):
    settings.PROVIDER_BREAKER_FAILURES = 3
    sandbox.client("sendgrid").configure(errors={"transient": 1.0})
    batch = [message("email", to={"email": f"user{i}@example.com"}) for i in range(10)]
    with running(worker("email")):
        produce("email", batch)
        wait_for(lambda: all(log_status(m) == "sent" for m in batch), timeout=60)
    providers_used = collections.Counter(DeliveryLog.objects.values_list("provider", flat=True))
    assert providers_used == {"smtp": 10}
    assert sandbox.client("smtp_control").stats()["accepted"] == 10
    assert sandbox.client("sendgrid").stats()["accepted"] == 0


def test_redis_down_fails_open_and_counts(running, topics, providers, sandbox, settings):
    """Beyond the Redis hold's bound (test_worker_failover.py: within it messages wait for Redis)."""
    settings.WORKER_REDIS_HOLD_SECONDS = 0.5
    dead = redis.Redis(port=1, socket_timeout=0.1, socket_connect_timeout=0.1)
    before = DEDUP_FAIL_OPEN.labels("sms")._value.get()
    unreachable = DedupStore(
        dead,
        django_settings.REDIS_KEY_PREFIX,
        breaker=CircuitBreaker("t", failure_threshold=1),
        on_fail_open=lambda n: DEDUP_FAIL_OPEN.labels("sms").inc(n),
    )
    with running(worker("sms", dedup=unreachable)):
        batch = [message("sms", to={"phone": f"+49152{i:07d}"}) for i in range(5)]
        produce("sms", batch)
        wait_for(lambda: sandbox.client("twilio").stats()["accepted"] == 5)
    assert DEDUP_FAIL_OPEN.labels("sms")._value.get() - before == 5


def test_a_transactional_message_behind_ten_thousand_queued_bulk_messages_is_sent_within_a_second(
    running, topics, providers, sandbox, capsys
):
    """10,000 bulk e-mails queued in the channel's bulk lane, a worker sending them at a 400/s contract
    the provider enforces with a rolling 1 s window; a transactional stream arrives meanwhile. Each
    transactional e-mail reaches the provider within a second; once the stream stops, bulk takes the
    whole contract again; never a 429, nothing twice."""
    rate = 400
    Provider.objects.filter(name="sendgrid").update(rate=rate, burst=1)
    client = sandbox.client("sendgrid")
    client.configure(rate=rate, latency={"kind": "uniform", "min_ms": 5, "max_ms": 25})
    bulk = [message("email", to={"email": f"bulk{i}@example.com"}, user_id=i, priority="bulk") for i in range(10_000)]
    produce("email", bulk, lane=Lane.BULK)
    latencies = []
    producer = Producer(producer_config())
    with running(worker("email")):
        wait_for(lambda: client.stats()["accepted"] >= rate, timeout=30, what="bulk flowing")
        for i in range(15):
            urgent = message("email", to={"email": f"otp{i}@example.com"}, user_id=100_000 + i)
            produced_at = time.time()
            produce("email", [urgent], producer=producer)
            [record] = wait_for(lambda u=urgent: client.requests(recipient=u["to"]["email"]), timeout=10, interval=0.02)
            latencies.append(record["t_wall"] - produced_at)
            time.sleep(0.1)
        behind = len(bulk) - client.stats()["accepted"]
        started, at_start = time.monotonic(), client.stats()["accepted"]
        time.sleep(4.0)
        bulk_rate = (client.stats()["accepted"] - at_start) / (time.monotonic() - started)
    stats = client.stats()
    with capsys.disabled():
        print(
            f"\n[lanes] transactional e-mails behind a bulk backlog ({behind} still queued): latency max "
            f"{max(latencies) * 1000:.0f} ms, median {sorted(latencies)[7] * 1000:.0f} ms; bulk afterwards "
            f"{bulk_rate:.0f}/s of {rate}/s; largest 1 s window {stats['max_1s_window']}; 429s {stats['rate_limited']}"
        )
    assert behind > 5000, "the transactional e-mails were sent while thousands of bulk ones waited"
    assert max(latencies) < 1.0, latencies
    # Loose: one worker in a test thread, sharing two cores with the sandbox and the brokers (the tight
    # utilisation figure is benchmarks/spike.py's job).
    assert bulk_rate >= 0.85 * rate, "bulk uses the contract once the transactional stream stops"
    assert stats["rate_limited"] == 0 and stats["max_1s_window"] <= rate
    assert stats["duplicates"]["keys"] == 0


def test_four_worker_processes_never_exceed_the_contract(topics, providers, sandbox, subprocess_env):
    rate, burst = 40, 1
    Provider.objects.filter(name="twilio").update(rate=rate, burst=burst)
    client = sandbox.client("twilio")
    client.configure(rate=1000, burst=1000)  # the sandbox does not throttle: we measure our own limiter
    batch = [message("sms", to={"phone": f"+49153{i:07d}"}) for i in range(240)]
    produce("sms", batch)
    env = {**subprocess_env, **sandbox.env, "KAFKA_TOPIC_PREFIX": topics}
    procs = [
        subprocess.Popen([sys.executable, "manage.py", "run_worker", "--channel", "sms"], env=env) for _ in range(4)
    ]
    try:
        wait_for(lambda: client.stats()["accepted"] >= 240, timeout=90, interval=0.5)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(30) for p in procs]
    stats = client.stats()
    assert codes == [0, 0, 0, 0]
    assert stats["accepted"] == 240 and stats["duplicates"]["keys"] == 0
    assert stats["max_1s_window"] <= rate + burst, stats["max_1s_window"]


def test_worker_killed_mid_batch_loses_nothing(topics, providers, sandbox, subprocess_env, capsys):
    client = sandbox.client("webhook")
    client.configure(latency={"kind": "fixed", "ms": 20})
    url = f"{sandbox.url('webhook')}/hooks"
    batch = [message("webhook", to={"url": url}, user_id=i) for i in range(1500)]
    produce("webhook", batch)
    env = {
        **subprocess_env,
        **sandbox.env,
        "KAFKA_TOPIC_PREFIX": topics,
        "PROVIDER_TIMEOUT": "1",
        "WORKER_IN_PROCESS_RETRIES": "0",
        "WORKER_BATCH_SIZE": "200",
    }
    cmd = [sys.executable, "manage.py", "run_worker", "--channel", "webhook"]
    first = subprocess.Popen(cmd, env=env)
    try:
        wait_for(lambda: client.stats()["accepted"] >= 300, timeout=60, interval=0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    at_kill = client.stats()["accepted"]
    second = subprocess.Popen(cmd, env=env)
    try:
        wait_for(lambda: len({r["idempotency_key"] for r in client.iter_requests()}) >= 1500, timeout=120, interval=0.5)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    keys = collections.Counter(r["idempotency_key"] for r in client.iter_requests())
    missing = {m["id"] for m in batch} - set(keys)
    duplicates = sum(c - 1 for c in keys.values())
    with capsys.disabled():
        print(
            f"\n[worker SIGKILL] 1500 messages, {at_kill} delivered at the kill, missing={len(missing)}, "
            f"sent twice={duplicates} (sends in flight when killed; the webhook-id lets receivers drop them)"
        )
    assert not missing
    assert duplicates <= django_settings.WORKER_CONCURRENCY, "only sends in flight at the kill can repeat"
