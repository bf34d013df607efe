"""The contract defects the schemathesis run found, each pinned by a plain example."""

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.fixture
def user_client(django_user_model):
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user("reader", email="reader@example.com"))
    return client


def test_an_unknown_event_field_is_a_400_naming_it(notification_type, service_client):
    body = {"type": "order.shipped", "recipients": ["1"], "recipient": "2"}
    response = service_client.post("/api/v1/events", body, format="json")
    assert response.status_code == 400
    assert response.json() == {"recipient": ["Unknown field."]}


def test_a_body_over_the_upload_limit_is_413(notification_type, service_client):
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100):
        body = {"type": "order.shipped", "recipients": ["1"], "data": {"x": "y" * 200}}
        response = service_client.post("/api/v1/events", body, format="json")
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"


def test_the_schema_lists_the_enabled_types_and_limits(notification_type):
    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json").json()
    event = schema["components"]["schemas"]["EventInRequest"]
    assert event["properties"]["type"]["enum"] == ["order.shipped"]
    assert event["properties"]["recipients"]["minItems"] == 1
    assert event["additionalProperties"] is False


@pytest.mark.parametrize(
    "query", ["page_size=false", "page_size=0", "page_size=101", "unread=maybe", "page_size=", "unread="]
)
def test_bad_inbox_query_parameters_are_400(user_client, query):
    response = user_client.get(f"/api/v1/me/notifications?{query}")
    assert response.status_code == 400
    assert set(response.json()) <= {"page_size", "unread"}


def test_read_all_refuses_a_body_that_is_not_an_object(user_client):
    response = user_client.post("/api/v1/me/notifications/read-all", "false", content_type="application/json")
    assert response.status_code == 400


def test_an_unknown_api_address_is_a_json_404():
    response = APIClient().get("/api/v1/me/devices/-1")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found.", "code": "not_found"}


def test_an_empty_quiet_hours_window_is_accepted(user_client):
    document = {"quiet_hours": {"enabled": True, "start": "22:00", "end": "22:00", "timezone": "Europe/Berlin"}}
    assert user_client.put("/api/v1/me/preferences", document, format="json").status_code == 200


@pytest.mark.parametrize(
    ("patch", "key"),
    [({"": None}, ""), ({"categories": {"nope": None}}, "categories.nope"), ({"colour": "red"}, "colour")],
)
def test_a_merge_patch_naming_an_unknown_key_is_a_400(user_client, patch, key):
    response = user_client.patch("/api/v1/me/preferences", patch, format="json")
    assert response.status_code == 400
    assert key in response.json() or (key == "" and "non_field_errors" in response.json())


def test_an_unknown_field_beside_a_batch_is_a_400(notification_type, service_client):
    body = {"events": [{"type": "order.shipped", "recipients": ["1"]}], "": [1]}
    response = service_client.post("/api/v1/events", body, format="json")
    assert response.status_code == 400
    assert response.json() == {"": ["Unknown field."]}


@pytest.mark.parametrize("token", [" ", "\x1c", "two words", "é"])
def test_a_push_token_outside_its_schema_is_a_400(user_client, token):
    response = user_client.post("/api/v1/me/devices", {"platform": "fcm", "token": token}, format="json")
    assert response.status_code == 400 and "token" in response.json()


@pytest.mark.parametrize("body", [False, 3, "text", []])
def test_a_preference_patch_that_is_not_an_object_is_a_400(user_client, body):
    response = user_client.patch("/api/v1/me/preferences", body, format="json")
    assert response.status_code == 400, response.content
