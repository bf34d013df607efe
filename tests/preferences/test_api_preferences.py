"""`/api/v1/me/preferences`: own document only, JSON-path errors, merge patch, security, If-Match."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from preferences.cache import preferences_get

URL = "/api/v1/me/preferences"
pytestmark = pytest.mark.django_db


def test_anonymous_is_refused():
    assert APIClient().get(URL).status_code in (401, 403)


def test_get_default_then_put_then_get(client_a):
    response = client_a.get(URL)
    assert response.status_code == 200
    assert response.json() == {"version": 0, "document": {}}
    document = {
        "global_mute": False,
        "categories": {"marketing": {"email": False, "push": True}},
        "quiet_hours": {"enabled": True, "start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"},
        "frequency_caps": {"marketing": {"*": {"max": 3, "per": "day"}}},
    }
    response = client_a.put(URL, document, format="json")
    assert response.status_code == 200, response.json()
    assert response.json() == {"version": 1, "document": document}
    assert response["ETag"] == '"1"'
    assert client_a.get(URL).json() == {"version": 1, "document": document}


def test_token_authentication_works(user_a):
    token = Token.objects.create(user=user_a)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get(URL).status_code == 200


def test_users_only_see_and_change_their_own_document(client_a, client_b, user_a, user_b):
    client_a.put(URL, {"global_mute": True}, format="json")
    assert client_b.get(URL).json() == {"version": 0, "document": {}}
    client_b.patch(URL, {"categories": {"social": {"push": False}}}, format="json")
    assert client_a.get(URL).json()["document"] == {"global_mute": True}
    assert preferences_get(user_a.pk).document == {"global_mute": True}
    assert preferences_get(user_b.pk).document == {"categories": {"social": {"push": False}}}


@pytest.mark.parametrize(
    ("document", "errors"),
    [
        ({"categories": {"marketing": {"push": "yes"}}}, {"categories.marketing.push": ["must be boolean"]}),
        ({"categories": {"newsletter": {"push": True}}}, {"categories.newsletter": ["unknown category"]}),
        ({"categories": {"marketing": {"fax": True}}}, {"categories.marketing.fax": ["unknown channel"]}),
        ({"colour": "blue"}, {"colour": ["unknown field"]}),
        (
            {"quiet_hours": {"enabled": True, "start": "7pm", "end": "07:00", "timezone": "Europe/Berlin"}},
            {"quiet_hours.start": ["must be a time HH:MM"]},
        ),
        (
            {"quiet_hours": {"enabled": True, "start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"}},
            {"quiet_hours.timezone": ["must be an IANA time zone such as Europe/Berlin"]},
        ),
        (
            {"quiet_hours": {"enabled": True, "start": "22:00"}},
            {"quiet_hours.end": ["this field is required"], "quiet_hours.timezone": ["this field is required"]},
        ),
        (
            {"frequency_caps": {"marketing": {"email": {"max": -1, "per": "month"}}}},
            {
                "frequency_caps.marketing.email.max": ["must be >= 0"],
                "frequency_caps.marketing.email.per": ["must be one of hour, day, week"],
            },
        ),
        ([1, 2], {"non_field_errors": ["must be an object"]}),
    ],
)
def test_schema_errors_are_400_keyed_by_json_path(client_a, document, errors):
    response = client_a.put(URL, document, format="json")
    assert response.status_code == 400
    assert response.json() == errors
    assert client_a.get(URL).json()["version"] == 0  # nothing was written


def test_security_cannot_be_turned_off(client_a):
    response = client_a.put(URL, {"categories": {"security": {"email": False}}}, format="json")
    assert response.status_code == 400
    assert response.json() == {"categories.security.email": ["security notifications cannot be turned off"]}
    response = client_a.patch(URL, {"categories": {"security": {"push": False}}}, format="json")
    assert response.status_code == 400 and "categories.security.push" in response.json()
    # Opting in to security on more channels is fine.
    assert client_a.patch(URL, {"categories": {"security": {"sms": True}}}, format="json").status_code == 200


def test_patch_deep_merges_and_null_removes(client_a):
    client_a.put(
        URL,
        {"global_mute": False, "categories": {"marketing": {"email": False}, "social": {"push": False}}},
        format="json",
    )
    response = client_a.patch(URL, {"categories": {"marketing": {"push": False}}}, format="json")
    assert response.status_code == 200
    assert response.json() == {
        "version": 2,
        "document": {
            "global_mute": False,
            "categories": {"marketing": {"email": False, "push": False}, "social": {"push": False}},
        },
    }
    response = client_a.patch(URL, {"categories": {"social": None, "marketing": {"email": None}}}, format="json")
    assert response.json()["document"] == {"global_mute": False, "categories": {"marketing": {"push": False}}}
    # A merge that produces an invalid document is refused as a whole.
    response = client_a.patch(URL, {"categories": {"marketing": {"push": 1}}}, format="json")
    assert response.status_code == 400 and response.json() == {"categories.marketing.push": ["must be boolean"]}


def test_if_match_refuses_a_write_based_on_an_old_version(client_a):
    client_a.put(URL, {"global_mute": True}, format="json")
    ok = client_a.patch(URL, {"global_mute": False}, format="json", HTTP_IF_MATCH='"1"')
    assert ok.status_code == 200 and ok.json()["version"] == 2
    stale = client_a.patch(URL, {"global_mute": True}, format="json", HTTP_IF_MATCH='"1"')
    assert stale.status_code == 412 and stale.json()["version"] == 2
    assert client_a.get(URL).json()["document"] == {"global_mute": False}


def test_patch_replaces_quiet_hours_whole(client_a):
    """A window is meaningful only complete: a patch's quiet_hours replaces the stored one, so a patch
    that enables it without its times is refused, as the API's schema says."""
    window = {"enabled": True, "start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}
    assert client_a.patch(URL, {"quiet_hours": window}, format="json").status_code == 200
    partial = client_a.patch(URL, {"quiet_hours": {"enabled": True, "start": "23:00", "end": "06:00"}}, format="json")
    assert partial.status_code == 400, partial.content
    assert client_a.get(URL).json()["document"]["quiet_hours"] == window
    off = client_a.patch(URL, {"quiet_hours": {"enabled": False}}, format="json")
    assert off.status_code == 200 and off.json()["document"]["quiet_hours"] == {"enabled": False}
