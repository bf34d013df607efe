"""The lean ingest path: the same answers as the serializers, per-key quotas, load shedding, and the
group commit (shared commits, concurrent repeats, never a 202 before the commit)."""

import concurrent.futures
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from django.db import connection
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from notifications.ingest.api_keys import api_keys
from notifications.ingest.group_commit import GROUP_REQUESTS
from notifications.ingest.serializers import EventBatchInSerializer, EventInSerializer
from notifications.ingest.validation import fast_events
from notifications.ingest.views import overload
from notifications.models import AcceptedEvent, ApiKey, NotificationType, OutboxEvent
from tests.waiting import wait_for

URL = "/api/v1/events"
KNOWN = {"order.shipped", "auth.otp"}

texts = st.one_of(st.text(max_size=12), st.sampled_from(["", " x", "x ", "order.shipped", "auth.otp", "a" * 201]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**20), st.floats(allow_nan=False), texts)
recipient_lists = st.one_of(
    st.lists(
        st.one_of(
            st.from_regex(r"[0-9]{1,20}", fullmatch=True),
            st.from_regex(r"[A-Za-z0-9@._:-]{1,12}", fullmatch=True),
            texts,
            st.integers(0, 99),
        ),
        max_size=4,
    ),
    scalars,
)
event_fields = st.fixed_dictionaries(
    {},
    optional={
        "event_id": scalars,
        "type": st.one_of(st.sampled_from(sorted(KNOWN)), scalars),
        "recipients": recipient_lists,
        "data": st.one_of(st.dictionaries(st.text(max_size=5), scalars, max_size=3), scalars),
        "extra": scalars,
    },
)


@pytest.mark.django_db
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=event_fields, batch=st.booleans())
def test_the_lean_check_accepts_only_what_the_serializers_accept_with_the_same_data(notification_type, event, batch):
    NotificationType.objects.get_or_create(key="auth.otp", defaults={"name": "OTP"})
    body = {"events": [event]} if batch else event
    fast = fast_events(body, is_batch=batch, known_type=KNOWN.__contains__)
    if fast is None:
        return  # the serializers decide: nothing to compare
    serializer = (EventBatchInSerializer if batch else EventInSerializer)(data=body)
    assert serializer.is_valid(), (body, serializer.errors)
    items = serializer.validated_data["events"] if batch else [serializer.validated_data]
    assert [(e.type, list(e.recipients), e.data, e.event_id) for e in fast] == [
        (i["type"], i["recipients"], i.get("data") or {}, i.get("event_id")) for i in items
    ]


# --- quotas ---------------------------------------------------------------------------------------------
def client_for(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    return client


def events(n: int, tag: str) -> dict:
    return {"events": [{"event_id": f"{tag}-{i}", "type": "order.shipped", "recipients": ["7"]} for i in range(n)]}


@pytest.mark.django_db
def test_a_key_over_its_quota_gets_429_and_nothing_of_the_request_is_kept(notification_type, settings):
    settings.REDIS_KEY_PREFIX = f"tq{uuid.uuid4().hex[:6]}:"
    api_keys.clear()
    limited_key, limited_raw = ApiKey.generate(service="runaway")
    ApiKey.objects.filter(pk=limited_key.pk).update(quota_rate=10, quota_burst=20)
    _free_key, free_raw = ApiKey.generate(service="steady")
    limited, free = client_for(limited_raw), client_for(free_raw)

    assert limited.post(URL, events(20, "a"), format="json").status_code == 202, "a whole burst fits"
    stored = AcceptedEvent.objects.count()
    over = limited.post(URL, events(1, "b"), format="json")
    assert over.status_code == 429 and over.json()["code"] == "throttled"
    assert int(over["Retry-After"]) >= 1
    too_big = limited.post(URL, events(25, "c"), format="json")
    assert too_big.status_code == 429 and "at most 20 at once" in too_big.json()["detail"]
    assert AcceptedEvent.objects.count() == stored, "nothing of a refused request is accepted"
    for i in range(3):  # another key is not affected, whatever it sends
        assert free.post(URL, events(500, f"free{i}"), format="json").status_code == 202
    time.sleep(0.25)  # 10 events/s: two tokens back
    assert limited.post(URL, events(2, "d"), format="json").status_code == 202, "the quota refills at its rate"


def test_a_quota_needs_a_positive_rate_and_a_burst_of_at_least_one():
    from django.core.exceptions import ValidationError

    for rate, burst, field in ((0.0, None, "quota_rate"), (None, 5, "quota_burst"), (5.0, 0, "quota_burst")):
        with pytest.raises(ValidationError) as info:
            ApiKey(service="s", quota_rate=rate, quota_burst=burst).clean()
        assert field in info.value.message_dict


# --- load shedding --------------------------------------------------------------------------------------
@pytest.mark.django_db
@override_settings(INGEST_MAX_OUTBOX_AGE=30)
def test_an_outbox_the_relay_does_not_drain_sheds_load_with_503_and_recovers(notification_type, service_client, client):
    stale = OutboxEvent.objects.create(topic="notif.events", key="1", bucket=1, payload="{}", headers="{}")
    OutboxEvent.objects.filter(pk=stale.pk).update(
        created_at=stale.created_at - __import__("datetime").timedelta(minutes=5)
    )
    overload._sampled_at = float("-inf")  # sample now rather than within the second
    refused = service_client.post(URL, events(1, "shed"), format="json")
    assert refused.status_code == 503 and refused.json()["code"] == "overloaded"
    assert int(refused["Retry-After"]) > 0 and "oldest unrelayed event" in refused.json()["detail"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["components"]["ingest"]["ok"] is False
    assert AcceptedEvent.objects.count() == 0
    OutboxEvent.objects.filter(pk=stale.pk).delete()
    overload._sampled_at = float("-inf")
    assert service_client.post(URL, events(1, "shed"), format="json").status_code == 202, "recovers"
    assert client.get("/readyz").json()["components"]["ingest"]["ok"] is True


# --- the group commit (its own thread and connection: transactional tests) --------------------------------
@pytest.mark.django_db(transaction=True)
def test_concurrent_repeats_of_one_event_id_are_accepted_exactly_once(notification_type, api_key):
    body = {"event_id": "same-event", "type": "order.shipped", "recipients": ["1", "2"]}

    def post(_i):
        try:
            return client_for(api_key[1]).post(URL, body, format="json")
        finally:
            connection.close()  # the thread's own database connection

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(32)))
    assert {a.status_code for a in answers} == {202}
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 31
    assert len({a.json()["id"] for a in answers}) == 1
    assert AcceptedEvent.objects.count() == 1 and OutboxEvent.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_share_commits(notification_type, api_key):
    """While one commit waits (the outbox table locked by another session), the requests that arrive
    queue up and are stored together in the next transaction."""
    before = GROUP_REQUESTS._sum.get(), sum(b.get() for b in GROUP_REQUESTS._buckets)

    def post(i):
        try:
            return client_for(api_key[1]).post(URL, events(1, f"g{i}"), format="json")
        finally:
            connection.close()  # the thread's own database connection

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        with lock_outbox():
            answers = [pool.submit(post, i) for i in range(20)]
            time.sleep(1.0)
            assert not any(a.done() for a in answers), "no 202 while the commit cannot happen"
        assert {a.result(30).status_code for a in answers} == {202}
    requests = GROUP_REQUESTS._sum.get() - before[0]
    commits = sum(b.get() for b in GROUP_REQUESTS._buckets) - before[1]
    assert requests == 20 and commits <= 3, f"{requests} requests in {commits} commits"


@pytest.mark.django_db(transaction=True)
def test_an_urgent_request_is_committed_while_a_bulk_group_waits(notification_type, api_key):
    """The lanes commit apart: a bulk group held by the database does not hold an urgent request."""
    import psycopg

    from notifications.outbox.envelope import platform_event_id
    from notifications.outbox.relay import conninfo_from_django

    NotificationType.objects.create(key="digest.weekly", name="Digest", category="marketing")
    NotificationType.objects.create(key="auth.otp", name="OTP", category="security", urgency="urgent")
    held = platform_event_id(service="orders", producer_event_id="digest-0")

    def post(body):
        try:
            return client_for(api_key[1]).post(URL, body, format="json")
        finally:
            connection.close()  # the thread's own database connection

    blocker = psycopg.connect(conninfo_from_django())
    try:  # another session inserting the bulk event's id first: the bulk group waits on its index entry
        blocker.execute(
            "INSERT INTO notifications_acceptedevent"
            " (id, service, producer_event_id, type, recipient_count, accepted_at)"
            " VALUES (%s, 'orders', 'digest-0', 'digest.weekly', 1, now())",
            (held,),
        )
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            bulk = pool.submit(post, {"event_id": "digest-0", "type": "digest.weekly", "recipients": ["7"]})
            time.sleep(0.5)
            urgent = pool.submit(post, {"event_id": "otp-0", "type": "auth.otp", "recipients": ["7"]})
            assert urgent.result(10).status_code == 202
            assert not bulk.done(), "the bulk group's commit is still held"
            blocker.rollback()
            assert bulk.result(30).status_code == 202
    finally:
        blocker.close()
    assert set(AcceptedEvent.objects.values_list("producer_event_id", flat=True)) == {"digest-0", "otp-0"}


class lock_outbox:
    """Another session holding the outbox table: inserts wait until it lets go."""

    def __enter__(self):
        import psycopg

        from notifications.outbox.relay import conninfo_from_django

        self.conn = psycopg.connect(conninfo_from_django())
        self.conn.execute("LOCK TABLE notifications_outboxevent IN EXCLUSIVE MODE")
        return self

    def __exit__(self, *exc):
        self.conn.rollback()
        self.conn.close()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_server_killed_before_its_commit_answered_nothing_and_kept_nothing(
    notification_type, api_key, subprocess_env
):
    """The server process dies while its group waits to commit: no request got a 202, and none of their
    events is in the database (the transaction died with the connection)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port), "--log-level", "warning"],
        env={**subprocess_env, "LOG_LEVEL": "WARNING"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base + "/healthz"), timeout=30, what="the server is up")
        headers = {"Authorization": f"Api-Key {api_key[1]}"}
        answers: list = []

        def post(i):
            try:
                answers.append(httpx.post(base + URL, json=events(1, f"k{i}"), headers=headers, timeout=30).status_code)
            except httpx.HTTPError as exc:
                answers.append(type(exc).__name__)

        with lock_outbox():
            threads = [threading.Thread(target=post, args=(i,)) for i in range(10)]
            for t in threads:
                t.start()
            wait_for(lambda: _waiting_on_lock() >= 1, timeout=20, what="the commit waits for the lock")
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            for t in threads:
                t.join(30)
    finally:
        if server.poll() is None:
            server.kill()
    assert len(answers) == 10 and 202 not in answers, answers
    assert not AcceptedEvent.objects.filter(producer_event_id__startswith="k").exists()
    assert not OutboxEvent.objects.exists()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _waiting_on_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cursor.fetchone()[0]
