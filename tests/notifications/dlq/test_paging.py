"""Paging on-call for unknown dead letters: once per fingerprint and window, after a crash, Redis down."""

import logging
import time

import orjson
import pytest
from django.core import mail

from notifications.bus.topics import channel_topic
from notifications.dlq import paging
from notifications.dlq.models import DeadLetter
from notifications.dlq.paging import Pager, page_unknown_dead_letters
from tests.notifications.dlq.conftest import (
    channel_message,
    dlq_headers,
    entry,
    produce_channel_dlq,
    produce_dlq,
    store,
)
from tests.waiting import wait_for


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_unknown_error_pages_once_per_fingerprint_window(topics, pager, triage, caplog):
    caplog.set_level(logging.ERROR, logger="notifications.dlq.paging")
    before = paging.PAGES._value.get()
    flood = [channel_message("sms", user_id=i) for i in range(300)]
    with triage(batch_size=50):
        # One new failure, 300 times: the numbers in the message differ, it is the same failure.
        produce_dlq(
            [
                (
                    channel_topic("sms", "dlq"),
                    orjson.dumps(b),
                    dlq_headers(b, error_class="quantum_flux", error=f"flux capacitor {i} melted at {i * 7} GW"),
                )
                for i, b in enumerate(flood)
            ]
        )
        wait_for(lambda: DeadLetter.objects.filter(category="unknown").count() == 300, timeout=60)
        wait_for(lambda: not DeadLetter.objects.filter(page_pending=True).exists(), timeout=60)
        other = channel_message("email")
        produce_channel_dlq(other, error_class="quantum_flux", error="the ether is unreachable", provider="sendgrid")
        wait_for(lambda: len(pager.receiver.bodies) == 2, timeout=60)
        time.sleep(0.5)
    assert DeadLetter.objects.count() == 301
    assert len({fp for fp in DeadLetter.objects.filter(channel="sms").values_list("fingerprint", flat=True)}) == 1
    assert len(pager.receiver.bodies) == 2, "one page per fingerprint, however many entries"
    first = pager.receiver.bodies[0]
    assert first["channel"] == "sms" and first["error_class"] == "quantum_flux" and "admin_url" in first
    assert len(mail.outbox) == 2 and mail.outbox[0].to == ["oncall@example.com"]
    assert paging.PAGES._value.get() - before == 2
    assert sum(1 for r in caplog.records if r.levelno == logging.ERROR and r.msg.startswith("PAGE")) == 2
    assert DeadLetter.objects.exclude(paged_at=None).count() == 2

    # Later entries of a paged fingerprint, inside the window: stored, no page.
    late = channel_message("sms")
    with triage():
        produce_channel_dlq(late, error_class="quantum_flux", error="flux capacitor 9 melted at 1 GW")
        wait_for(lambda: DeadLetter.objects.filter(message_id=late["id"], page_pending=False).exists(), timeout=60)
    assert len(pager.receiver.bodies) == 2


@pytest.mark.django_db(transaction=True)
def test_pending_pages_survive_a_crash_and_redis_down_fails_open(pager):
    [e] = [entry(1, error_class="quantum_flux", cause="quantum_flux", code="", message="new thing")]
    store([e])  # stored, then "crashed" before paging: the row stays pending
    assert DeadLetter.objects.get().page_pending
    report = page_unknown_dead_letters(pager=pager)
    assert (report.paged, report.entries) == (1, 1) and len(pager.receiver.bodies) == 1
    assert page_unknown_dead_letters(pager=pager).entries == 0

    import redis as redis_lib

    down = Pager(
        redis_client=redis_lib.Redis(port=1, socket_timeout=0.1, socket_connect_timeout=0.1),
        key_prefix="x:",
        webhook_url=pager.webhook_url,
    )
    assert down.acquire_window("abc") is True, "no window store: page rather than stay silent"
