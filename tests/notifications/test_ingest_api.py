"""`POST /api/v1/events`: authentication, validation, idempotency, 202 with committed outbox rows."""

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from notifications.models import AcceptedEvent, OutboxEvent

URL = "/api/v1/events"
pytestmark = pytest.mark.django_db


def event(**overrides):
    body = {"event_id": "order-1-shipped", "type": "order.shipped", "recipients": ["42"], "data": {"n": "1"}}
    body.update(overrides)
    return body


def test_missing_key_is_401(notification_type):
    response = APIClient().post(URL, event(), format="json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Api-Key"


def test_unknown_key_is_401(notification_type):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Api-Key np_00000000_nope")
    assert client.post(URL, event(), format="json").status_code == 401


def test_revoked_key_is_403(notification_type, api_key, service_client):
    key, _raw = api_key
    key.revoked_at = timezone.now()
    key.save()
    response = service_client.post(URL, event(), format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "api_key_revoked"


def test_x_api_key_header_works(notification_type, api_key):
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=api_key[1])
    assert client.post(URL, event(), format="json").status_code == 202


def test_accepts_one_event_with_202_and_writes_outbox_rows(notification_type, service_client):
    response = service_client.post(URL, event(recipients=["1", "2", "2"]), format="json")
    assert response.status_code == 202
    body = response.json()
    assert body["event_id"] == "order-1-shipped" and body["duplicate"] is False
    assert sorted(OutboxEvent.objects.values_list("key", flat=True)) == ["1", "2"]  # repeat dropped
    assert AcceptedEvent.objects.get(id=body["id"]).service == "orders"


def test_repeat_post_returns_original_and_creates_nothing(notification_type, service_client):
    first = service_client.post(URL, event(), format="json").json()
    second = service_client.post(URL, event(data={"changed": True}), format="json")
    assert second.status_code == 202
    assert second.json()["id"] == first["id"] and second.json()["duplicate"] is True
    assert second.json()["accepted_at"] == first["accepted_at"]
    assert OutboxEvent.objects.count() == 1 and AcceptedEvent.objects.count() == 1


def test_batch(notification_type, service_client):
    batch = {"events": [event(event_id=f"e{i}", recipients=[str(i)]) for i in range(5)] + [event(event_id="e0")]}
    response = service_client.post(URL, batch, format="json")
    assert response.status_code == 202
    events = response.json()["events"]
    assert len(events) == 6 and [e["duplicate"] for e in events] == [False] * 5 + [True]
    assert OutboxEvent.objects.count() == 5


@pytest.mark.parametrize(
    ("body", "field_path"),
    [
        (event(type="no.such.type"), ("type",)),
        (event(recipients=[]), ("recipients",)),
        (event(recipients=["not a recipient id"]), ("recipients",)),
        (event(recipients=["a/b"]), ("recipients", "0")),
        (event(data="not an object"), ("data",)),
        ({"recipients": ["1"]}, ("type",)),
        ({"events": []}, ("events",)),
        ({"events": [event(), event(type="nope")]}, ("events", "1", "type")),
    ],
)
def test_validation_errors_name_the_field(notification_type, service_client, body, field_path):
    response = service_client.post(URL, body, format="json")
    assert response.status_code == 400
    errors = response.json()
    for part in field_path:
        errors = errors[part]
    assert errors, response.json()
    assert OutboxEvent.objects.count() == 0, "nothing of a rejected request is kept"


def test_list_body_is_refused(notification_type, service_client):
    response = service_client.post(URL, [event()], format="json")
    assert response.status_code == 400 and "non_field_errors" in response.json()


@override_settings(INGEST_MAX_DATA_BYTES=100)
def test_payload_size_limit(notification_type, service_client):
    response = service_client.post(URL, event(data={"blob": "x" * 200}), format="json")
    assert response.status_code == 400
    assert "limit is 100 bytes" in response.json()["data"][0]


@override_settings(INGEST_MAX_BATCH=2)
def test_batch_size_limit(notification_type, service_client):
    response = service_client.post(URL, {"events": [event(event_id=str(i)) for i in range(3)]}, format="json")
    assert response.status_code == 400 and "At most 2" in response.json()["events"][0]


def test_malformed_json_is_400(notification_type, service_client):
    response = service_client.generic("POST", URL, "{not json", content_type="application/json")
    assert response.status_code == 400 and "JSON parse error" in response.json()["detail"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_id": 215}, "event_id"),  # the schema says string: a number is a client bug, not "215"
        ({"type": 7}, "type"),
        ({"recipients": ["\x85u-1"]}, "recipients"),  # whitespace to Python, not to ECMAScript's \\s
        ({"recipients": ["\ufeffu-1"]}, "recipients"),  # the reverse
        ({"recipients": [{"id": "u-1", "first_name": 5}]}, "recipients"),
        ({"recipients": [{"id": "u-1", "devices": [{"platform": "fcm", "token": " t "}]}]}, "recipients"),
    ],
)
def test_values_the_schema_refuses_are_400s(notification_type, service_client, change, field):
    response = service_client.post(URL, {**event(), **change}, format="json")
    assert response.status_code == 400, response.json()
    assert field in response.json()


def test_schema_documents_the_endpoint(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/v1/events" in response.content
