"""Where the ingest's CPU work runs: bulk requests on the process's one bulk thread at a lower CPU
priority, so an urgent request is admitted while bulk ones wait their turn."""

import asyncio
import os
import threading

import orjson
import pytest

from notifications.ingest.admission import executors, lower_thread_priority, request_lane
from notifications.ingest.asgi import ingest_events_asgi
from notifications.models import AcceptedEvent, NotificationType
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


def test_the_bulk_thread_runs_at_a_lower_cpu_priority(settings):
    def nice_of_this_thread():
        return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = os.getpriority(os.PRIO_PROCESS, 0)
    name, nice = executors.for_lane(Lane.BULK).submit(nice_of_this_thread).result(5)
    assert name.startswith("ingest-bulk")
    assert nice == min(19, base + settings.INGEST_BULK_NICE)
    assert executors.for_lane(Lane.PRIORITY) is None  # the event loop's default threads


def test_lowering_a_threads_priority_leaves_the_others_alone():
    seen = {}

    def lowered():
        lower_thread_priority(3)
        seen["lowered"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join(5)
    assert seen["lowered"] == min(19, base + 3)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


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
def test_an_urgent_request_is_admitted_while_the_bulk_thread_is_busy(lane_types, api_key):
    busy, release = threading.Event(), threading.Event()
    executors.for_lane(Lane.BULK).submit(lambda: busy.set() or release.wait(30))
    assert busy.wait(5)

    async def scenario():
        bulk = asyncio.create_task(post(api_key[1], {"events": [digest(1), digest(2)]}))
        urgent = await asyncio.wait_for(post(api_key[1], {"type": "auth.otp", "recipients": ["7"]}), 10)
        assert urgent[0] == 202
        assert not bulk.done(), "the bulk request waits for the bulk thread"
        release.set()
        status, answer = await asyncio.wait_for(bulk, 10)
        assert status == 202 and len(answer["events"]) == 2

    try:
        asyncio.run(scenario())
    finally:
        release.set()
    assert sorted(AcceptedEvent.objects.values_list("type", flat=True)) == [
        "auth.otp",
        "digest.weekly",
        "digest.weekly",
    ]
