"""Where the ingest's work runs: bulk requests in the bulk process at a lower CPU priority, so an urgent
request is admitted while bulk ones wait their turn."""

import asyncio
import os
import signal
import threading
import time

import orjson
import psycopg
import pytest

from notifications.ingest.admission import request_lane
from notifications.ingest.asgi import ingest_events_asgi
from notifications.ingest.bulk_process import bulk_process
from notifications.ingest.views import EVENTS
from notifications.models import AcceptedEvent, NotificationType, OutboxEvent
from notifications.outbox.envelope import platform_event_id
from notifications.outbox.relay import conninfo_from_django
from notifications.priority import Lane, type_priority


@pytest.fixture
def lane_types(db):
    NotificationType.objects.create(key="digest.weekly", name="Digest", category="marketing")
    NotificationType.objects.create(key="auth.otp", name="OTP", category="security", urgency="urgent")
    NotificationType.objects.create(key="order.shipped", name="Shipped")
    for key in ("digest.weekly", "auth.otp", "order.shipped"):
        type_priority(key)  # read the table as a request's admission does


def digest(n: int = 1) -> dict:
    return {"type": "digest.weekly", "recipients": [str(n)]}


@pytest.mark.parametrize(
    ("body", "lane"),
    [
        (digest(), Lane.BULK),
        ({"events": [digest(1), digest(2)]}, Lane.BULK),
        ({"events": [digest(1), {"type": "auth.otp", "recipients": ["2"]}]}, Lane.PRIORITY),
        ({"type": "order.shipped", "recipients": ["1"]}, Lane.PRIORITY),
        ({"type": "never.seen", "recipients": ["1"]}, Lane.PRIORITY),
        ({"type": ["digest.weekly"], "recipients": ["1"]}, Lane.PRIORITY),
        ({"events": []}, Lane.PRIORITY),
        ({"events": "digest.weekly"}, Lane.PRIORITY),
        ([digest()], Lane.PRIORITY),
        (None, Lane.PRIORITY),
    ],
)
def test_a_request_is_bulk_only_when_every_event_is_of_a_known_bulk_type(lane_types, body, lane):
    assert request_lane(body) is lane


def test_without_lanes_every_request_is_admitted_in_the_priority_lane(lane_types, settings):
    settings.PRIORITY_LANES = False
    assert request_lane(digest()) is Lane.PRIORITY


@pytest.fixture
def bulk_ingest():
    """The bulk process, stopped after the test (its connection would keep the test database open)."""
    yield bulk_process
    bulk_process.close()


def test_the_bulk_process_runs_at_a_lower_cpu_priority(settings, bulk_ingest):
    pool = bulk_ingest.executor()
    assert pool.submit(os.getpid).result(30) != os.getpid()
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result(5) == min(19, base + settings.INGEST_BULK_NICE)


async def post(raw_key: str, body: dict) -> tuple[int, dict]:
    """One request through the ASGI handler, as uvicorn hands it over."""
    scope = {"type": "http", "method": "POST", "path": "/api/v1/events",
             "headers": [(b"authorization", f"Api-Key {raw_key}".encode())]}  # fmt: skip
    answer: dict = {}

    async def receive():
        return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}

    async def send(message):
        answer.update(message)

    await ingest_events_asgi(scope, receive, send)
    return answer["status"], orjson.loads(answer["body"])


@pytest.mark.django_db(transaction=True)
def test_an_urgent_request_is_admitted_while_the_bulk_process_is_busy(lane_types, api_key, bulk_ingest):
    busy = bulk_ingest.executor().submit(time.sleep, 3)  # the process serves one request at a time

    async def scenario():
        bulk = asyncio.create_task(post(api_key[1], {"events": [digest(1), digest(2)]}))
        urgent = await asyncio.wait_for(post(api_key[1], {"type": "auth.otp", "recipients": ["7"]}), 10)
        assert urgent[0] == 202
        assert not busy.done() and not bulk.done(), "the bulk request waits for the bulk process"
        status, answer = await asyncio.wait_for(bulk, 30)
        assert status == 202 and len(answer["events"]) == 2
        assert [event["duplicate"] for event in answer["events"]] == [False, False]

    accepted_before = EVENTS.labels("orders", "accepted")._value.get()
    asyncio.run(scenario())
    assert EVENTS.labels("orders", "accepted")._value.get() == accepted_before + 3, "the child's counts reach /metrics"
    assert sorted(AcceptedEvent.objects.values_list("type", flat=True)) == [
        "auth.otp",
        "digest.weekly",
        "digest.weekly",
    ]


@pytest.mark.django_db(transaction=True)
def test_a_bulk_process_killed_before_its_commit_answers_503_keeps_nothing_and_is_replaced(
    lane_types, api_key, bulk_ingest
):
    child = bulk_ingest.executor().submit(os.getpid).result(30)
    held = platform_event_id(service="orders", producer_event_id="digest-0")
    blocker = psycopg.connect(conninfo_from_django())
    try:  # another session inserting the event's id first: the child's commit waits on its index entry
        blocker.execute(
            "INSERT INTO notifications_acceptedevent"
            " (id, service, producer_event_id, type, recipient_count, accepted_at)"
            " VALUES (%s, 'orders', 'digest-0', 'digest.weekly', 1, now())",
            (held,),
        )

        async def killed_while_committing():
            bulk = asyncio.create_task(post(api_key[1], {"events": [{**digest(1), "event_id": "digest-0"}]}))
            await asyncio.sleep(1.0)
            assert not bulk.done(), "the commit waits for the other session"
            os.kill(child, signal.SIGKILL)
            return await asyncio.wait_for(bulk, 30)

        status, answer = asyncio.run(killed_while_committing())
        blocker.rollback()
    finally:
        blocker.close()
    assert status == 503 and answer["code"] == "unavailable"
    assert not AcceptedEvent.objects.exists() and not OutboxEvent.objects.exists()

    status, answer = asyncio.run(post(api_key[1], {"events": [{**digest(1), "event_id": "digest-0"}]}))
    assert status == 202 and answer["events"][0]["duplicate"] is False
    assert bulk_ingest.executor().submit(os.getpid).result(5) != child


@pytest.mark.django_db(transaction=True)
def test_a_bulk_process_that_died_between_requests_is_replaced_for_the_next(lane_types, api_key, bulk_ingest):
    pool = bulk_ingest.executor()
    child = pool.submit(os.getpid).result(30)
    os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the pool has reaped its child (it marks itself broken first)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    status, answer = asyncio.run(post(api_key[1], {"events": [digest(1)]}))
    assert status == 202, answer
