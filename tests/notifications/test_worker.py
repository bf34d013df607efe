"""Channel workers end to end: real Kafka and Redis, provider sandboxes speaking the real wire formats."""

import collections
import contextlib
import signal
import subprocess
import sys
import threading
import time
import uuid

import orjson
import pytest
import redis
from confluent_kafka import Producer
from django.conf import settings as django_settings

from notifications.bus.config import producer_config
from notifications.bus.runner import ConsumerRunner, RunnerConfig
from notifications.bus.topics import channel_topic, delivery_topic
from notifications.delivery.circuit_breaker import CircuitBreaker
from notifications.delivery.dedup import DedupStore
from notifications.delivery.setup import DEDUP_FAIL_OPEN, build_worker, build_worker_runner, worker_topics
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
def providers(db, sandbox):
    for client in (sandbox.client(p) for p in ("sendgrid", "twilio", "fcm", "apns", "webhook")):
        client.reset(config=True)
    sandbox.client("smtp_control").reset(config=True) if "smtp_control" in sandbox.urls else None
    rows = [
        Provider(name="sendgrid", channel="email", kind="sendgrid", rate=1000, burst=50, priority=1),
        Provider(name="smtp", channel="email", kind="smtp", rate=1000, burst=50, priority=2),
        Provider(name="twilio", channel="sms", kind="twilio", rate=1000, burst=50),
        Provider(name="fcm", channel="push", kind="fcm", rate=1000, burst=50),
        Provider(name="apns", channel="push", kind="apns", rate=1000, burst=50),
        Provider(name="webhook", channel="webhook", kind="webhook", rate=1000, burst=50),
        Provider(name="inapp", channel="inapp", kind="inapp", rate=10000, burst=500),
    ]
    Provider.objects.bulk_create(rows)
    return {r.name: r for r in rows}


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


class RunningWorker:
    def __init__(self, channel: str, **kwargs):
        self.runner = build_worker_runner(channel, group=f"w-{uuid.uuid4().hex[:6]}", **kwargs)
        self.thread = threading.Thread(target=self.runner.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert self.runner.assigned.wait(60), "worker got its partitions"
        return self

    def __exit__(self, *exc):
        self.runner.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "worker stops on request"


def log_status(m: dict) -> str | None:
    row = DeliveryLog.objects.filter(event_id=m["event_id"], user_id=m["user_id"], channel=m["channel"]).first()
    return row.status if row else None


@pytest.mark.parametrize("channel", ["email", "sms", "webhook"])
def test_happy_path_http_channels(topics, providers, sandbox, channel):
    provider, sandbox_name = PROVIDERS[channel]
    to = {
        "email": {"email": "ada@example.com"},
        "sms": {"phone": "+4915112345678"},
        "webhook": {"url": f"{sandbox.url('webhook')}/hooks/orders"},
    }[channel]
    m = message(channel, to=to)
    with RunningWorker(channel):
        produce(channel, [m])
        wait_for(lambda: log_status(m) == "sent")
    [request] = sandbox.client(sandbox_name).requests()
    assert request["idempotency_key"] == m["id"], "the stable notification id reaches the provider"
    row = DeliveryLog.objects.get(event_id=m["event_id"])
    assert row.provider == provider and row.attempts == 1 and row.provider_message_id


def test_happy_path_push_fcm_and_apns(topics, providers, sandbox):
    fcm = message("push", to={"platform": "fcm", "devices": [["fcm", "fcm-token-1"], ["fcm", "fcm-token-2"]]})
    apns = message("push", to={"platform": "apns", "devices": [["apns", "a" * 64]]})
    with RunningWorker("push"):
        produce("push", [fcm, apns])
        wait_for(lambda: log_status(fcm) == "sent" and log_status(apns) == "sent")
    assert sorted(r["recipient"] for r in sandbox.client("fcm").requests()) == ["fcm-token-1", "fcm-token-2"]
    assert [r["recipient"] for r in sandbox.client("apns").requests()] == ["a" * 64]


def test_apns_pushes_beyond_the_connection_streams_wait_outside_the_send_deadline(topics, providers, sandbox, settings):
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
    with RunningWorker("push"):
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


def test_happy_path_inapp_written_in_bulk(topics, providers, django_user_model):
    users = [django_user_model.objects.create(username=f"in{i}") for i in range(20)]
    batch = [message("inapp", to={"user_id": u.id}, user_id=u.id) for u in users]
    with RunningWorker("inapp"):
        produce("inapp", batch)
        wait_for(lambda: InboxMessage.objects.count() == 20)
    assert set(InboxMessage.objects.values_list("user_id", flat=True)) == {u.id for u in users}


def test_same_message_three_times_is_delivered_once(topics, providers, sandbox):
    m = message("sms", to={"phone": "+4915112340000"})
    with RunningWorker("sms"):
        produce("sms", [m, m, m])
        wait_for(lambda: log_status(m) == "sent")
        time.sleep(1.0)  # give any duplicate the chance to go out
    stats = sandbox.client("twilio").stats()
    assert stats["accepted"] == 1 and stats["duplicates"]["keys"] == 0


def test_transient_5xx_is_retried_then_sent(topics, providers, sandbox):
    m = message("email", to={"email": f"fail5xx-2-{uuid.uuid4().hex[:6]}@example.com"})
    with RunningWorker("email"):
        produce("email", [m])
        wait_for(lambda: log_status(m) == "sent", timeout=30)
    row = DeliveryLog.objects.get(event_id=m["event_id"])
    assert row.attempts == 3, "two 503s, then the send that worked"
    assert sandbox.client("sendgrid").stats()["accepted"] == 1


def test_a_retry_waits_in_the_retry_tier_of_its_own_lane(topics, providers, sandbox, settings):
    settings.WORKER_IN_PROCESS_RETRIES = 0  # every retry goes through a retry tier
    transactional = message("email", to={"email": f"fail5xx-1-t{uuid.uuid4().hex[:6]}@example.com"})
    bulk = message("email", to={"email": f"fail5xx-1-b{uuid.uuid4().hex[:6]}@example.com"}, priority="bulk")
    with RunningWorker("email"):
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


def test_permanent_400_goes_to_the_dlq_without_retry(topics, providers, sandbox):
    m = message("sms", to={"phone": "+15005550001"})  # Twilio's test number for an invalid 'To'
    with RunningWorker("sms"):
        produce("sms", [m])
        wait_for(lambda: log_status(m) == "dlq")
    [dead] = consume_matching(channel_topic("sms", "dlq"), lambda x: True, expected=1)
    headers = {k: v.decode() for k, v in dead.headers()}
    assert headers["error-class"] == "invalid_contact" and headers["attempt"] == "1"
    assert orjson.loads(headers["errors"])[0]["code"] == "21211"
    assert sandbox.client("twilio").stats()["errors"], "the provider saw exactly one try"
    assert sum(sandbox.client("twilio").stats()["errors"].values()) == 1


def test_unregistered_token_goes_to_dlq_and_deactivates_the_device(topics, providers, django_user_model):
    user = django_user_model.objects.create(username="gone")
    token = f"unregistered-{uuid.uuid4().hex}"
    device = Device.objects.create(user=user, platform="fcm", token=token)
    m = message("push", to={"platform": "fcm", "devices": [["fcm", token]]}, user_id=user.id)
    with RunningWorker("push"):
        produce("push", [m])
        wait_for(lambda: log_status(m) == "dlq")
    device.refresh_from_db()
    assert device.active is False


def test_rate_limit_storm_backs_off_without_losing_or_duplicating(topics, providers, sandbox):
    """The provider's real contract (20/s) is below what we configured (200/s): it answers 429s.
    The worker must hold the bucket until the reset, lose nothing, send nothing twice."""
    Provider.objects.filter(name="twilio").update(rate=200, burst=20)
    client = sandbox.client("twilio")
    client.configure(rate=20, burst=20)
    batch = [message("sms", to={"phone": f"+49151{i:07d}"}) for i in range(120)]
    with RunningWorker("sms"):
        produce("sms", batch)
        wait_for(lambda: client.stats()["accepted"] >= 120, timeout=60)
        time.sleep(1.0)
    stats = client.stats()
    assert stats["accepted"] == 120 and stats["duplicates"]["keys"] == 0
    assert stats["max_1s_window"] <= 20
    assert stats["rate_limited"] < len(batch), f"no retry storm: {stats['rate_limited']} 429s for 120 messages"


def test_failover_to_the_next_provider_when_the_primary_circuit_opens(topics, providers, sandbox, settings):
    settings.PROVIDER_BREAKER_FAILURES = 3
    sandbox.client("sendgrid").configure(errors={"transient": 1.0})
    batch = [message("email", to={"email": f"user{i}@example.com"}) for i in range(10)]
    with RunningWorker("email"):
        produce("email", batch)
        wait_for(lambda: all(log_status(m) == "sent" for m in batch), timeout=60)
    providers_used = collections.Counter(DeliveryLog.objects.values_list("provider", flat=True))
    assert providers_used == {"smtp": 10}
    assert sandbox.client("smtp_control").stats()["accepted"] == 10
    assert sandbox.client("sendgrid").stats()["accepted"] == 0


def test_redis_down_fails_open_and_counts(topics, providers, sandbox):
    dead = redis.Redis(port=1, socket_timeout=0.1, socket_connect_timeout=0.1)
    worker = build_worker("sms")
    before = DEDUP_FAIL_OPEN.labels("sms")._value.get()
    worker.dedup = DedupStore(
        dead,
        django_settings.REDIS_KEY_PREFIX,
        breaker=CircuitBreaker("t", failure_threshold=1),
        on_fail_open=lambda n: DEDUP_FAIL_OPEN.labels("sms").inc(n),
    )
    runner = ConsumerRunner(
        RunnerConfig(role="t", topics=worker_topics("sms"), group=f"t-{uuid.uuid4().hex[:6]}"), worker
    )
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        batch = [message("sms", to={"phone": f"+49152{i:07d}"}) for i in range(5)]
        produce("sms", batch)
        wait_for(lambda: sandbox.client("twilio").stats()["accepted"] == 5)
    finally:
        runner.stop_event.set()
        thread.join(20)
    assert DEDUP_FAIL_OPEN.labels("sms")._value.get() - before == 5


def test_a_transactional_message_behind_ten_thousand_queued_bulk_messages_is_sent_within_a_second(
    topics, providers, sandbox, capsys
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
    with RunningWorker("email"):
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
    assert bulk_rate >= 0.9 * rate, "bulk uses the contract once the transactional stream stops"
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
