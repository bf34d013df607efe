"""`/api/v1/me/devices` and `/api/v1/me/profile`."""

from __future__ import annotations

import pytest

from preferences.models import Device, RecipientProfile

from .factories import DeviceFactory

pytestmark = pytest.mark.django_db
DEVICES = "/api/v1/me/devices"
PROFILE = "/api/v1/me/profile"


def test_register_list_and_unregister(client_a, user_a):
    response = client_a.post(DEVICES, {"platform": "apns", "token": "a" * 64}, format="json")
    assert response.status_code == 201
    device_id = response.json()["id"]
    assert [d["id"] for d in client_a.get(DEVICES).json()] == [device_id]

    again = client_a.post(DEVICES, {"platform": "apns", "token": "a" * 64}, format="json")
    assert again.status_code == 201 and again.json()["id"] == device_id  # refreshed, not duplicated

    assert client_a.delete(f"{DEVICES}/{device_id}").status_code == 204
    assert client_a.get(DEVICES).json() == []
    device = Device.objects.get(pk=device_id)
    assert not device.active and device.deactivated_at and device.deactivation_reason


def test_reregistering_a_token_moves_it_and_reactivates_it(client_a, client_b, user_b):
    device = DeviceFactory(user=user_b, platform="fcm", token="shared-token", active=False)
    response = client_a.post(DEVICES, {"platform": "fcm", "token": "shared-token"}, format="json")
    assert response.json()["id"] == device.pk
    device.refresh_from_db()
    assert device.user.username == "alice" and device.active and device.deactivated_at is None
    assert client_b.get(DEVICES).json() == []


def test_bad_device_input(client_a):
    response = client_a.post(DEVICES, {"platform": "blackberry", "token": "x"}, format="json")
    assert response.status_code == 400 and "platform" in response.json()
    assert client_a.post(DEVICES, {"platform": "fcm", "token": ""}, format="json").status_code == 400


def test_users_cannot_see_or_remove_each_others_devices(client_a, client_b, user_b):
    theirs = DeviceFactory(user=user_b)
    assert client_a.get(DEVICES).json() == []
    assert client_a.delete(f"{DEVICES}/{theirs.pk}").status_code == 404
    theirs.refresh_from_db()
    assert theirs.active
    assert [d["id"] for d in client_b.get(DEVICES).json()] == [theirs.pk]


def test_profile_get_and_patch(client_a, user_a):
    assert client_a.get(PROFILE).json() == {
        "email": "alice@example.com",
        "phone": "",
        "locale": "",
        "timezone": "",
        "email_valid": True,
        "phone_valid": False,
    }
    response = client_a.patch(
        PROFILE, {"phone": "+49 151 1234 5678", "locale": "de-CH", "timezone": "Europe/Zurich"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["phone"] == "+4915112345678"  # normalised to E.164
    profile = RecipientProfile.objects.get(user=user_a)
    assert (profile.phone, profile.locale, profile.timezone) == ("+4915112345678", "de-CH", "Europe/Zurich")

    assert client_a.patch(PROFILE, {"locale": "en"}, format="json").json()["phone"] == "+4915112345678"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"phone": "12345"}, "phone"),
        ({"phone": "+49 000"}, "phone"),
        ({"timezone": "Europe/Atlantis"}, "timezone"),
        ({"locale": "not a locale!"}, "locale"),
    ],
)
def test_profile_validation_errors(client_a, body, field):
    response = client_a.patch(PROFILE, body, format="json")
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_a_new_phone_clears_its_invalid_mark(client_a, user_a):
    client_a.patch(PROFILE, {"phone": "+4915112345678"}, format="json")
    RecipientProfile.objects.filter(user=user_a).update(phone_invalid_at="2025-01-01T00:00:00Z")
    assert client_a.get(PROFILE).json()["phone_valid"] is False
    assert client_a.patch(PROFILE, {"phone": "+41791234567"}, format="json").json()["phone_valid"] is True
