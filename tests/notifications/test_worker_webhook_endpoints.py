"""The webhook worker end to end with several endpoints: back-pressure and failures stay with their
endpoint, and each endpoint's messages are signed with its own secrets."""

import base64
import logging
import time
import uuid

import orjson
import pytest
from confluent_kafka import Producer

from notifications.bus.config import producer_config
from notifications.bus.topics import channel_topic, delivery_topic
from notifications.delivery.wiring import build_worker_runner
from notifications.dispatch.messages import channel_message
from notifications.models import DeliveryLog, Provider
from notifications.webhooks.services import webhook_endpoint_save
from provider_sandbox import credentials
from tests.kafka_helpers import consume_matching
from tests.waiting import wait_for
from tests.webhook_signatures import verifies

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

SLOW_SECRET = "whsec_" + base64.b64encode(b"slow-endpoint-secret-0123456789ab").decode()
FAST_SECRET = "whsec_" + base64.b64encode(b"fast-endpoint-secret-0123456789ab").decode()


@pytest.fixture
def hooks(db, sandbox):
    """The webhook sandbox from its startup configuration, and the webhook provider (1000/s)."""
    client = sandbox.client("webhook")
    client.reset(config=True)
    Provider.objects.create(name="webhook", channel="webhook", kind="webhook", rate=1000, burst=50)
    return client


def message(url: str, user_id: int) -> dict:
    return channel_message(
        event_id=str(uuid.uuid4()),
        user_id=user_id,
        channel="webhook",
        type="order.shipped",
        category="transactional",
        urgency="normal",
        priority="transactional",
        created_at="2026-11-25T10:00:00+00:00",
        locale="en",
        to={"url": url},
        content={"payload": {"type": "order.shipped", "user": user_id}},
    )


def produce(producer: Producer, messages: list[dict]) -> dict[str, float]:
    """Produce to the webhook channel; returns each message's id -> when it was acknowledged."""
    for m in messages:
        producer.produce(delivery_topic("webhook"), key=str(m["user_id"]).encode(), value=orjson.dumps(m))
    assert producer.flush(30) == 0
    now = time.time()
    return {m["id"]: now for m in messages}


def statuses(messages: list[dict]) -> list[str | None]:
    rows = dict(
        DeliveryLog.objects.filter(event_id__in=[m["event_id"] for m in messages]).values_list("event_id", "status")
    )
    return [rows.get(uuid.UUID(m["event_id"])) for m in messages]


def test_one_endpoints_retry_after_defers_only_its_own_messages(running, topics, hooks, sandbox):
    """The slow endpoint answers 429 + Retry-After: 30 for 30 s. Messages to the fast one, produced
    during that time, are delivered within 2 s; the slow one's wait out its Retry-After and are then
    delivered; every message once, each signed with its own endpoint's secret."""
    base = sandbox.url("webhook")
    slow_url, fast_url = f"{base}/hooks/busy-30/slow", f"{base}/hooks/fast"
    webhook_endpoint_save(url=slow_url, new_secret=SLOW_SECRET)
    webhook_endpoint_save(url=fast_url, new_secret=FAST_SECRET)
    hooks.configure(options={"endpoint_secrets": {"/hooks/busy-30/slow": SLOW_SECRET, "/hooks/fast": FAST_SECRET}})
    slow = [message(slow_url, user_id=i) for i in range(9)]
    fast = [message(fast_url, user_id=100 + i) for i in range(40)]
    producer = Producer(producer_config())
    produced: dict[str, float] = {}
    with running(build_worker_runner("webhook", group=f"w-{uuid.uuid4().hex[:6]}")):
        produced |= produce(producer, slow[:1])
        wait_for(lambda: hooks.stats()["errors"].get("busy", 0) >= 1, timeout=30)
        busy_since = time.time()
        for wave in range(4):  # slow and fast messages mixed, over a few seconds of the busy window
            produced |= produce(producer, slow[1 + wave * 2 : 3 + wave * 2] + fast[wave * 10 : (wave + 1) * 10])
            time.sleep(0.5)
        wait_for(lambda: statuses(fast) == ["sent"] * len(fast), timeout=30)
        wait_for(lambda: statuses(slow) == ["sent"] * len(slow), timeout=90)
    records = hooks.requests(raw=True)
    by_key = {r["idempotency_key"]: r for r in records}
    assert len(records) == len(by_key) == len(slow) + len(fast), "none lost, none twice"
    latencies = sorted(by_key[m["id"]]["t_wall"] - produced[m["id"]] for m in fast)
    assert latencies[-1] < 2.0, f"the fast endpoint was held up: latencies {latencies}"
    slow_arrivals = [by_key[m["id"]]["t_wall"] for m in slow]
    print(
        f"\nfast endpoint: max latency {latencies[-1]:.3f}s over {len(fast)}; slow endpoint: delivered "
        f"{min(slow_arrivals) - busy_since:.1f}-{max(slow_arrivals) - busy_since:.1f}s after its 429 (Retry-After: 30)"
    )
    assert min(slow_arrivals) >= busy_since + 28, "the slow endpoint's messages waited out its Retry-After"
    assert hooks.stats()["errors"]["busy"] <= len(slow), "a paused endpoint is not sent to until it resumes"
    assert all(verifies(by_key[m["id"]], SLOW_SECRET) for m in slow)
    assert all(verifies(by_key[m["id"]], FAST_SECRET) for m in fast)
    assert not any(verifies(r, FAST_SECRET) for r in (by_key[m["id"]] for m in slow))
    assert not any(verifies(r, credentials.WEBHOOK_SECRET) for r in records), "registered: not the global secret"


def test_a_failing_endpoint_is_paused_alone_and_does_not_open_the_providers_circuit(
    running, topics, hooks, sandbox, settings
):
    """An endpoint answering 503 to everything: after a short run of failures it is paused on its
    own, and the provider's circuit stays closed, so another endpoint's messages keep flowing."""
    settings.PROVIDER_BREAKER_FAILURES = 3
    settings.WEBHOOK_ENDPOINT_FAILURE_THRESHOLD = 3
    base = sandbox.url("webhook")
    down_url, fast_url = f"{base}/hooks/fail503-1000/down", f"{base}/hooks/fast"
    webhook_endpoint_save(url=down_url, new_secret=SLOW_SECRET)
    webhook_endpoint_save(url=fast_url, new_secret=FAST_SECRET)
    hooks.configure(options={"endpoint_secrets": {"/hooks/fail503": SLOW_SECRET, "/hooks/fast": FAST_SECRET}})
    down = [message(down_url, user_id=i) for i in range(20)]
    fast = [message(fast_url, user_id=100 + i) for i in range(20)]
    producer = Producer(producer_config())
    produced: dict[str, float] = {}
    with running(build_worker_runner("webhook", group=f"w-{uuid.uuid4().hex[:6]}")):
        produce(producer, down)
        wait_for(lambda: hooks.stats()["errors"].get("transient", 0) >= 3, timeout=30)
        produced |= produce(producer, fast)
        wait_for(lambda: statuses(fast) == ["sent"] * len(fast), timeout=30)
        time.sleep(1.0)
    by_key = {r["idempotency_key"]: r for r in hooks.requests()}
    latencies = sorted(by_key[m["id"]]["t_wall"] - produced[m["id"]] for m in fast)
    assert latencies[-1] < 2.0, f"the other endpoint was held up: latencies {latencies}"
    assert not any(m["id"] in by_key for m in down)
    # All were sent at once, before the first failure came back; then the endpoint was left alone
    # (without the pause each would have been retried in the worker at once, twice).
    assert hooks.stats()["errors"]["transient"] < 2 * len(down), "the failing endpoint was paused, not hammered"


def test_an_endpoint_answering_429_without_retry_after_is_paused_after_a_short_run(
    running, topics, hooks, sandbox, settings
):
    """429s without a Retry-After count as a failure run: after three the endpoint is paused, rather
    than every message trying it again and again in the worker."""
    settings.WEBHOOK_ENDPOINT_FAILURE_THRESHOLD = 3
    hooks.configure(options={"busy_retry_after": False})
    busy_url = f"{sandbox.url('webhook')}/hooks/busy-60/bare"
    busy = [message(busy_url, user_id=i) for i in range(10)]
    with running(build_worker_runner("webhook", group=f"w-{uuid.uuid4().hex[:6]}")):
        produce(Producer(producer_config()), busy)
        wait_for(lambda: hooks.stats()["errors"].get("busy", 0) >= 3, timeout=30)
        time.sleep(4.0)
    # at most the ten (those polled in the first batches were sent at once) answered 429, then the
    # endpoint was paused; without the pause each would have been tried twice more within a second
    assert hooks.stats()["errors"]["busy"] < 2 * len(busy)
    assert hooks.stats()["accepted"] == 0


def test_an_endpoint_switched_off_dead_letters_its_messages_and_no_secret_leaks(
    running, topics, hooks, sandbox, caplog
):
    base = sandbox.url("webhook")
    off_url = f"{base}/hooks/off"
    endpoint = webhook_endpoint_save(url=off_url, new_secret=SLOW_SECRET)
    webhook_endpoint_save(endpoint=endpoint, url=off_url, active=False)
    m = message(off_url, user_id=1)
    caplog.set_level(logging.DEBUG)
    with running(build_worker_runner("webhook", group=f"w-{uuid.uuid4().hex[:6]}")):
        produce(Producer(producer_config()), [m])
        wait_for(lambda: statuses([m]) == ["dlq"], timeout=30)
    assert hooks.stats()["received"] == 0
    [dead] = consume_matching(
        channel_topic("webhook", "dlq"), lambda msg: orjson.loads(msg.value())["id"] == m["id"], expected=1
    )
    headers = b" ".join(value or b"" for _name, value in dead.headers() or [])
    assert b"endpoint_inactive" in headers
    secret_key = SLOW_SECRET.removeprefix("whsec_")
    logged = " ".join(str(record.__dict__) for record in caplog.records)  # the messages and their extras
    assert secret_key.encode() not in headers and secret_key not in logged
    assert credentials.WEBHOOK_SECRET.removeprefix("whsec_") not in logged
