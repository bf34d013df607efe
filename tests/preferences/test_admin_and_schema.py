"""Admin (validated preference edits that update the cache, device actions) and the OpenAPI schema."""

from __future__ import annotations

import orjson
import pytest
import yaml

from preferences.cache import cache_key
from preferences.models import Device, PreferenceDocument

from .factories import DeviceFactory, InboxMessageFactory, PreferenceDocumentFactory, RecipientProfileFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_admin_edit_validates_bumps_version_and_updates_the_cache(
    staff_client, redis_client, django_capture_on_commit_callbacks
):
    doc = PreferenceDocumentFactory(document={}, version=3)
    url = f"/admin/preferences/preferencedocument/{doc.pk}/change/"
    assert staff_client.get(url).status_code == 200

    bad = staff_client.post(url, {"document": '{"categories": {"security": {"email": false}}}'})
    assert bad.status_code == 200 and "security notifications cannot be turned off" in bad.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        ok = staff_client.post(url, {"document": '{"global_mute": true}'})
    assert ok.status_code == 302
    doc.refresh_from_db()
    assert (doc.version, doc.document) == (4, {"global_mute": True})
    assert orjson.loads(redis_client.get(cache_key(doc.user_id))) == {"v": 4, "doc": {"global_mute": True}}


def test_admin_lists_search_and_device_actions(staff_client):
    profile = RecipientProfileFactory()
    device = DeviceFactory(user=profile.user)
    InboxMessageFactory(user=profile.user)
    for model in ("recipientprofile", "device", "preferencedocument", "inboxmessage"):
        response = staff_client.get(f"/admin/preferences/{model}/", {"q": profile.user.username})
        assert response.status_code == 200, model
    response = staff_client.post(
        "/admin/preferences/device/", {"action": "deactivate", "_selected_action": [device.pk]}
    )
    assert response.status_code == 302
    assert not Device.objects.get(pk=device.pk).active
    staff_client.post("/admin/preferences/device/", {"action": "reactivate", "_selected_action": [device.pk]})
    assert Device.objects.get(pk=device.pk).active
    assert staff_client.get("/admin/preferences/inboxmessage/add/").status_code == 403
    assert PreferenceDocument.objects.count() == 0


def test_openapi_schema_documents_the_end_user_api(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    paths = yaml.safe_load(response.content)["paths"]
    for path in (
        "/api/v1/me/preferences",
        "/api/v1/me/devices",
        "/api/v1/me/devices/{id}",
        "/api/v1/me/notifications",
        "/api/v1/me/notifications/{id}/read",
        "/api/v1/me/notifications/read-all",
        "/api/v1/me/profile",
        "/api/v1/unsubscribe/{token}",
    ):
        assert path in paths, path
    assert {"get", "put", "patch"} <= set(paths["/api/v1/me/preferences"])
