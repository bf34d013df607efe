"""Kill switches honoured by a real channel worker: what is already in its topics when an operator
pulls a switch is parked or dropped, not sent, and parked messages go out after the drain."""

import uuid

import orjson
import pytest
from confluent_kafka import Producer

from campaigns.progress import progress_key
from notifications.bus.config import producer_config
from notifications.bus.topics import channel_topic, delivery_topic
from notifications.delivery.kill_switches import WorkerSwitches
from notifications.delivery.wiring import build_worker_runner
from notifications.dispatch.drain import DrainRefused, drain_parked
from notifications.dispatch.messages import channel_message
from notifications.models import DeliveryLog, KillSwitch, Provider
from notifications.redis_client import get_redis
from tests.kafka_helpers import consume_matching
from tests.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def providers(sandbox_providers):
    return sandbox_providers("sendgrid", "smtp", "twilio")


def message(channel: str, *, urgent: bool = False, meta: dict | None = None) -> dict:
    to = {"email": {"email": f"{uuid.uuid4().hex[:8]}@example.com"}, "sms": {"phone": "+4915112345678"}}[channel]
    return channel_message(
        event_id=str(uuid.uuid4()),
        user_id=7,
        channel=channel,
        type="auth.code" if urgent else "order.shipped",
        category="security" if urgent else "transactional",
        urgency="urgent" if urgent else "normal",
        priority="urgent" if urgent else "transactional",
        created_at="2026-11-25T10:00:00+00:00",
        locale="en",
        to=to,
        content={"subject": "Shipped", "body": "On its way"} if channel == "email" else {"body": "Shipped"},
        meta=meta,
    )


def produce(topic: str, messages: list[dict], headers: dict | None = None) -> None:
    producer = Producer(producer_config())
    for m in messages:
        pairs = [("idempotency-key", m["id"]), *(headers or {}).items()]
        producer.produce(topic, key=b"7", value=orjson.dumps(m), headers=[(k, v.encode()) for k, v in pairs])
    assert producer.flush(30) == 0


def worker(channel: str):
    return build_worker_runner(channel, group=f"w-{uuid.uuid4().hex[:6]}")


def log_row(m: dict) -> tuple[str, str, str] | None:
    row = DeliveryLog.objects.filter(event_id=m["event_id"], user_id=m["user_id"], channel=m["channel"]).first()
    return (row.status, row.reason, row.provider) if row else None


def accepted(sandbox, name: str) -> int:
    return sandbox.client(name).stats()["accepted"]


def test_a_pause_parks_what_is_already_queued_or_retrying_and_the_drain_sends_it_once(
    running, topics, providers, sandbox
):
    queued, urgent, retrying = message("email"), message("email", urgent=True), message("email")
    produce(delivery_topic("email"), [queued, urgent])
    produce(delivery_topic("email", tier="5s"), [retrying], headers={"attempt": "1", "not-before": "0"})
    switch = KillSwitch.objects.create(channel="email", mode="pause")  # pulled after they were queued
    with running(worker("email")):
        for m in (queued, urgent, retrying):
            wait_for(lambda m=m: log_row(m) == ("parked", "kill_switch_pause", ""), what="parked")
        parked = consume_matching(
            channel_topic("email", "delayed"),
            lambda r: orjson.loads(r.value())["id"] in {queued["id"], urgent["id"], retrying["id"]},
            expected=3,
        )
        assert len(parked) == 3, "each parked once, in the topic the drain reads"
        assert accepted(sandbox, "sendgrid") == 0 and accepted(sandbox, "smtp_control") == 0, "nothing sent"

        with pytest.raises(DrainRefused):
            drain_parked(channel="email")
        switch.mode = "normal"
        switch.save()
        assert drain_parked(channel="email").moved == 3
        for m in (queued, urgent, retrying):
            wait_for(lambda m=m: (log_row(m) or ("",))[0] == "sent", what="sent after the drain")
    assert accepted(sandbox, "sendgrid") == 3, "each sent exactly once"


def test_a_pause_stops_sends_already_waiting_for_their_send_slot(running, topics, providers, sandbox):
    """At 1 send/s the worker holds every message in flight, waiting for its slot, and starts no new
    batch: the switch is still seen (re-read while settling) and checked right before each send."""
    Provider.objects.filter(name="smtp").update(enabled=False)
    Provider.objects.filter(name="sendgrid").update(rate=1, burst=1)
    batch = [message("email") for _ in range(8)]
    produce(delivery_topic("email"), batch)
    with running(worker("email")):
        wait_for(lambda: accepted(sandbox, "sendgrid") >= 1, what="the first send")
        switch = KillSwitch.objects.create(channel="email", mode="pause")
        wait_for(lambda: all((log_row(m) or ("",))[0] in ("sent", "parked") for m in batch), what="all settled")
        sent = accepted(sandbox, "sendgrid")
        assert 1 <= sent <= 5, f"the sends after the switch was seen are parked ({sent} of 8 sent)"
        switch.mode = "normal"
        switch.save()
        assert drain_parked(channel="email").moved == 8 - sent
        wait_for(lambda: all((log_row(m) or ("",))[0] == "sent" for m in batch), timeout=30, what="sent")
    assert accepted(sandbox, "sendgrid") == 8


def test_drop_non_urgent_drops_queued_messages_counts_them_for_their_campaign_and_lets_urgent_ones_through(
    running, topics, providers, sandbox
):
    meta = {"campaign_id": 424242, "launch_id": str(uuid.uuid4())}
    dropped, urgent = message("sms", meta=meta), message("sms", urgent=True)
    produce(delivery_topic("sms"), [dropped, urgent])
    KillSwitch.objects.create(channel="sms", mode="drop_non_urgent")
    with running(worker("sms")):
        wait_for(lambda: log_row(urgent) == ("sent", "", "twilio"), what="the urgent message sent")
        wait_for(lambda: log_row(dropped) == ("suppressed", "kill_switch", ""), what="dropped")
    assert accepted(sandbox, "twilio") == 1
    progress = get_redis().hgetall(progress_key(meta["campaign_id"]))
    assert progress.get(b"suppressed") == b"1" and progress.get(b"halted") == b"1", "counted like a cancelled send"


def test_a_provider_switch_fails_over_and_decides_when_no_provider_is_left(running, topics, providers, sandbox):
    """sendgrid on delay: non-urgent e-mail goes to smtp, urgent still through sendgrid; twilio (the
    only SMS provider) on drop_non_urgent: a non-urgent SMS is dropped."""
    KillSwitch.objects.create(channel="email", provider="sendgrid", mode="delay")
    KillSwitch.objects.create(channel="sms", provider="twilio", mode="drop_non_urgent")
    normal, urgent = message("email"), message("email", urgent=True)
    text = message("sms")
    produce(delivery_topic("email"), [normal, urgent])
    produce(delivery_topic("sms"), [text])
    with running(worker("email")), running(worker("sms")):
        wait_for(lambda: log_row(normal) == ("sent", "", "smtp"), what="failed over to smtp")
        wait_for(lambda: log_row(urgent) == ("sent", "", "sendgrid"), what="urgent through the delayed provider")
        wait_for(lambda: log_row(text) == ("suppressed", "kill_switch", "twilio"), what="dropped at twilio")
    assert accepted(sandbox, "twilio") == 0


def test_a_paused_only_provider_parks_and_the_drain_waits_for_it(running, topics, providers, sandbox):
    Provider.objects.filter(name="smtp").update(enabled=False)
    switch = KillSwitch.objects.create(channel="email", provider="sendgrid", mode="pause")
    m = message("email")
    produce(delivery_topic("email"), [m])
    with running(worker("email")):
        wait_for(lambda: log_row(m) == ("parked", "kill_switch_pause", "sendgrid"), what="parked")
        with pytest.raises(DrainRefused, match="every email provider"):
            drain_parked(channel="email")
        switch.mode = "normal"
        switch.save()
        assert drain_parked(channel="email").moved == 1
        wait_for(lambda: (log_row(m) or ("",))[0] == "sent", what="sent after the drain")
    assert accepted(sandbox, "sendgrid") == 1


def test_the_worker_board_is_refreshed_within_its_interval_and_survives_a_database_outage(monkeypatch):
    now = [0.0]
    switches = WorkerSwitches("push", clock=lambda: now[0])
    switches.refresh_if_due()
    KillSwitch.objects.create(channel="push", provider="fcm", mode="pause")
    switches.refresh_if_due()
    assert switches.board.cached_mode("push", "fcm") == "normal"  # cached…
    now[0] += 2.0
    switches.refresh_if_due()
    assert switches.board.cached_mode("push", "fcm") == "pause"  # …for at most 2 s

    from django.db import OperationalError

    def away(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(KillSwitch.objects, "all", away)
    now[0] += 2.0
    switches.refresh_if_due()  # logged, not raised
    assert switches.board.cached_mode("push", "fcm") == "pause", "the modes read last stay in force"
