"""Events that carry recipient objects: upserted in the event's transaction, delivered to the new address."""

from __future__ import annotations

import orjson
import pytest
from django.contrib.auth import get_user_model

from notifications.models import AcceptedEvent, OutboxEvent
from preferences.models import RecipientProfile
from tests.dispatch_helpers import dispatch, out

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("types")]

URL = "/api/v1/events"


def event(**fields):
    return {"event_id": "inline-1", "type": "order.shipped", "data": {"order": "9"}, **fields}


def profile(external_id: str) -> RecipientProfile:
    return RecipientProfile.objects.select_related("user").get(external_id=external_id)


def test_an_inline_recipient_is_upserted_and_gets_the_message_at_its_new_address(service_client, fresh_topic):
    service_client.put("/api/v1/recipients/u-77", {"email": "old@example.com"}, format="json")
    body = event(recipients=[{"id": "u-77", "email": "new@example.com", "locale": "de"}, {"id": "u-78"}, "u-77"])
    response = service_client.post(URL, body, format="json")
    assert response.status_code == 202, response.json()
    assert profile("u-77").user.email == "new@example.com" and profile("u-77").locale == "de"
    assert profile("u-78").user.email == ""
    rows = list(OutboxEvent.objects.order_by("id"))
    assert [row.key for row in rows] == ["u-77", "u-78"]

    dispatch(fresh_topic, [orjson.loads(rows[0].payload)])
    [email] = out("email", str(AcceptedEvent.objects.get().id))
    assert email["to"] == {"email": "new@example.com"}


def test_a_bad_inline_recipient_is_a_400_naming_the_field_and_nothing_is_kept(service_client):
    body = {"events": [event(recipients=["u-1"]), event(event_id="e2", recipients=[{"id": "u-2", "phone": "12"}])]}
    response = service_client.post(URL, body, format="json")
    assert response.status_code == 400
    assert "phone" in response.json()["events"]["1"]["recipients"]["0"], response.json()
    assert not OutboxEvent.objects.exists() and not RecipientProfile.objects.filter(external_id="u-2").exists()


def test_a_repeated_event_does_not_upsert_again(service_client):
    assert service_client.post(URL, event(recipients=[{"id": "u-5", "email": "a@example.com"}]), format="json")
    again = service_client.post(URL, event(recipients=[{"id": "u-5", "email": "b@example.com"}]), format="json")
    assert again.json()["duplicate"] is True
    assert profile("u-5").user.email == "a@example.com"


def test_an_inline_recipient_may_not_be_a_staff_account(service_client):
    staff = get_user_model().objects.create(username="operator", is_staff=True, email="ops@example.com")
    response = service_client.post(URL, event(recipients=[{"id": str(staff.pk), "email": "x@evil.com"}]), format="json")
    assert response.status_code == 400 and "id" in response.json()["recipients"]["0"]
    staff.refresh_from_db()
    assert staff.email == "ops@example.com" and not OutboxEvent.objects.exists()
