"""The identify API against real PostgreSQL and Redis: upsert, read, erase, bulk, field-level 400s."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from notifications.models import DeliveryLog, ScheduledMessage
from preferences.cache import cache_key, preferences_get
from preferences.models import Device, InboxMessage, PreferenceDocument, RecipientProfile
from preferences.recipient_ids import resolve_recipients

from .factories import InboxMessageFactory, PreferenceDocumentFactory, RecipientProfileFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/recipients/"
FULL = {
    "email": "ana@example.com",
    "first_name": "Ana",
    "phone": "+4915112345678",
    "locale": "de-CH",
    "timezone": "Europe/Zurich",
    "attributes": {"plan": "pro", "country": "CH"},
    "devices": [{"platform": "fcm", "token": "tok-ana-1"}],
}


def test_put_creates_then_updates_only_the_given_fields(service_client):
    created = service_client.put(URL + "u-42", FULL, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["id"] == "u-42" and body["email"] == "ana@example.com" and body["phone"] == "+4915112345678"
    assert body["devices"] == [{"platform": "fcm", "token": "tok-ana-1"}] and body["email_valid"] is True

    updated = service_client.put(
        URL + "u-42", {"locale": "fr", "attributes": {"country": None, "seats": 3}}, format="json"
    )
    assert updated.status_code == 200
    body = updated.json()
    assert body["locale"] == "fr" and body["email"] == "ana@example.com" and body["timezone"] == "Europe/Zurich"
    assert body["attributes"] == {"plan": "pro", "seats": 3}
    assert service_client.get(URL + "u-42").json() == body

    cleared = service_client.put(URL + "u-42", {"phone": "", "email": None, "attributes": None}, format="json")
    assert cleared.json()["phone"] == "" and cleared.json()["email"] == "" and cleared.json()["attributes"] == {}
    assert resolve_recipients(["u-42"]) == {"u-42": RecipientProfile.objects.get(external_id="u-42").user_id}


def test_a_changed_phone_loses_its_invalid_mark(service_client):
    service_client.put(URL + "u-5", {"phone": "+4915112345678"}, format="json")
    RecipientProfile.objects.filter(external_id="u-5").update(phone_invalid_at=timezone.now())
    assert service_client.put(URL + "u-5", {"phone": "+4915112345678"}, format="json").json()["phone_valid"] is False
    assert service_client.put(URL + "u-5", {"phone": "+4915199999999"}, format="json").json()["phone_valid"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"phone": "0151 123"}, "phone"),
        ({"phone": "+49 151 12345678"}, "phone"),  # E.164 has no spaces
        ({"email": "not-an-address"}, "email"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"locale": "english please"}, "locale"),
        ({"attributes": "not an object"}, "attributes"),
        ({"devices": [{"platform": "blackberry", "token": "t"}]}, "devices"),
        ({"phone_number": "+4915112345678"}, "phone_number"),
        ({"webhook_url": "ftp://x"}, "webhook_url"),
        ({"first_name": 42}, "first_name"),  # a string field: a number is refused, not converted
        ({"devices": [{"platform": "fcm", "token": "with space"}]}, "devices"),
        ({"devices": [{"platform": "fcm", "token": "t", "extra": 1}]}, "devices"),
    ],
)
def test_bad_fields_are_400s_naming_the_field_and_nothing_is_written(service_client, body, field):
    response = service_client.put(URL + "u-bad", body, format="json")
    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert not RecipientProfile.objects.filter(external_id="u-bad").exists()
    assert not get_user_model().objects.exclude(username__startswith="user").exists()


def test_a_malformed_id_is_a_400_and_unknown_ids_are_404s(service_client):
    assert service_client.put(URL + "a%20b", {}, format="json").status_code == 400
    assert "id" in service_client.put(URL + "a%20b", {}, format="json").json()
    assert service_client.get(URL + "nobody").status_code == 404
    assert service_client.delete(URL + "nobody").status_code == 404


def test_without_an_api_key_the_api_is_closed(client):
    assert client.put(URL + "u-1", {}, content_type="application/json").status_code == 401
    assert client.get(URL + "u-1").status_code == 401


def test_staff_accounts_cannot_be_changed_or_erased_through_the_api(service_client):
    staff = UserFactory(is_staff=True)
    assert service_client.put(URL + str(staff.pk), {"email": "evil@example.com"}, format="json").status_code == 409
    assert service_client.delete(URL + str(staff.pk)).status_code == 409
    staff.refresh_from_db()
    assert staff.email != "evil@example.com"


def test_a_user_addressed_by_internal_id_adopts_it_as_external_id(service_client):
    plain = UserFactory()
    response = service_client.put(URL + str(plain.pk), {"locale": "it"}, format="json")
    assert response.status_code == 200
    assert RecipientProfile.objects.get(user=plain).external_id == str(plain.pk)


def test_delete_erases_the_person_and_pseudonymises_the_log(
    service_client, redis_client, django_capture_on_commit_callbacks
):
    service_client.put(URL + "u-gone", FULL, format="json")
    user = get_user_model().objects.get(recipient_profile__external_id="u-gone")
    PreferenceDocumentFactory(user=user)
    preferences_get(user.pk)  # cached in Redis
    InboxMessageFactory(user=user)
    DeliveryLog.objects.create(
        event_id="11111111-1111-1111-1111-111111111111", user_id=user.pk, channel="email", type="t", status="sent"
    )
    ScheduledMessage.objects.create(
        due_at=timezone.now(), topic="t", key=str(user.pk), payload={"user_id": user.pk, "id": "x"}
    )
    other = RecipientProfileFactory(external_id="u-stays").user
    ScheduledMessage.objects.create(
        due_at=timezone.now(), topic="t", key=str(other.pk), payload={"user_id": other.pk, "id": "y"}
    )

    with django_capture_on_commit_callbacks(execute=True):
        assert service_client.delete(URL + "u-gone").status_code == 204

    assert not get_user_model().objects.filter(pk=user.pk).exists()
    for model in (RecipientProfile, Device, PreferenceDocument, InboxMessage):
        assert not model.objects.filter(user_id=user.pk).exists(), model
    assert list(ScheduledMessage.objects.values_list("key", flat=True)) == [str(other.pk)]
    [row] = DeliveryLog.objects.all()
    assert row.user_id < 0 and row.status == "sent"
    assert not redis_client.exists(cache_key(user.pk))
    assert service_client.get(URL + "u-gone").status_code == 404
    assert resolve_recipients(["u-gone"]) == {}


def test_bulk_upserts_the_valid_items_in_one_go_and_reports_each(service_client):
    service_client.put(URL + "u-old", {"email": "old@example.com"}, format="json")
    items = [
        {"id": "u-new", "email": "new@example.com", "devices": [{"platform": "apns", "token": "a" * 64}]},
        {"id": "u-old", "first_name": "Olga"},
        {"id": "u-broken", "phone": "12"},
        {"email": "no-id@example.com"},
        {"id": "u-new", "email": "twice@example.com"},
        "not an object",
    ]
    response = service_client.post(URL + "bulk", {"recipients": items}, format="json")
    assert response.status_code == 207, response.json()
    body = response.json()
    assert (body["created"], body["updated"], body["invalid"]) == (1, 1, 4)
    results = body["results"]
    assert [r["status"] for r in results] == ["created", "updated", "invalid", "invalid", "invalid", "invalid"]
    assert "phone" in results[2]["errors"] and "id" in results[3]["errors"] and "id" in results[4]["errors"]
    assert service_client.get(URL + "u-new").json()["email"] == "new@example.com"
    old = service_client.get(URL + "u-old").json()
    assert (old["email"], old["first_name"]) == ("old@example.com", "Olga")
    assert service_client.get(URL + "u-broken").status_code == 404


def test_bulk_limits_are_400s(service_client, settings):
    settings.RECIPIENTS_BULK_MAX = 2
    too_many = {"recipients": [{"id": f"u-{i}"} for i in range(3)]}
    assert "recipients" in service_client.post(URL + "bulk", too_many, format="json").json()
    assert service_client.post(URL + "bulk", {"recipients": []}, format="json").status_code == 400
    assert service_client.post(URL + "bulk", [{"id": "x"}], format="json").status_code == 400
    assert not RecipientProfile.objects.exists()


def test_a_bulk_item_that_is_not_an_object_is_reported_invalid(service_client):
    response = service_client.post(URL + "bulk", {"recipients": [None, {"id": "u-ok"}]}, format="json")
    assert response.status_code == 207, response.json()
    results = response.json()["results"]
    assert results[0]["status"] == "invalid" and results[1]["status"] == "created"


def test_a_bulk_of_a_thousand_is_a_fixed_number_of_statements(service_client, django_assert_max_num_queries):
    items = [{"id": f"b-{i}", "email": f"b{i}@example.com", "attributes": {"n": i}} for i in range(1000)]
    with django_assert_max_num_queries(20):
        response = service_client.post(URL + "bulk", {"recipients": items}, format="json")
    assert response.status_code == 200 and response.json()["created"] == 1000
    assert RecipientProfile.objects.filter(external_id__startswith="b-").count() == 1000
