"""The hosted preference centre behind the signed e-mail link: the grid, saving it, the locale."""

from __future__ import annotations

import pytest

from notifications.channels import ALL_CHANNELS
from preferences.cache import preferences_get
from preferences.centre import field_name
from preferences.services import preferences_update
from preferences.unsubscribe import unsubscribe_url

from .factories import RecipientProfileFactory

pytestmark = pytest.mark.django_db


def path_for(user_id: int, category: str = "marketing") -> str:
    return unsubscribe_url(user_id, category).removeprefix("http://127.0.0.1:8000")


def test_the_page_shows_every_category_by_channel_with_labels(client):
    user = RecipientProfileFactory(locale="en").user
    preferences_update(user=user, document={"categories": {"product": {"sms": False}}}, partial=True)
    page = client.get(path_for(user.pk)).content.decode()
    for channel in ALL_CHANNELS:
        assert f'name="{field_name("marketing", channel)}"' in page
    assert 'id="pref-product-sms" name="pref-product-sms" aria-labelledby="cat-product ch-sms">' in page  # unticked
    assert 'name="pref-security-email" aria-labelledby="cat-security ch-email" checked disabled' in page
    assert "<script" not in page
    assert preferences_get(user.pk).version == 1  # looking changes nothing


def test_saving_the_grid_writes_opt_outs_and_lifts_them(client, django_capture_on_commit_callbacks):
    user = RecipientProfileFactory(locale="en").user
    preferences_update(user=user, document={"categories": {"social": {"push": False, "email": True}}}, partial=True)
    ticked = {
        field_name(c, ch): "on" for c in ("transactional", "marketing", "product", "social") for ch in ALL_CHANNELS
    }
    del ticked[field_name("marketing", "email")]
    with django_capture_on_commit_callbacks(execute=True):  # the cache gets the new version on commit
        response = client.post(path_for(user.pk), {"action": "save", **ticked})
    assert response.status_code == 200 and "Your settings are saved." in response.content.decode()
    state = preferences_get(user.pk)
    assert state.channel_setting("marketing", "email") is False
    assert state.channel_setting("social", "push") is None  # the opt-out is lifted: the default again
    assert state.channel_setting("social", "email") is True  # an explicit opt-in stays


def test_the_page_speaks_the_recipients_language_where_a_translation_exists(client):
    german = RecipientProfileFactory(locale="de-CH").user
    page = client.get(path_for(german.pk))
    assert page["Content-Language"] == "de-ch"
    assert "Benachrichtigungseinstellungen" in page.content.decode() and "Werbung" in page.content.decode()
    japanese = RecipientProfileFactory(locale="ja").user
    assert "Notification settings" in client.get(path_for(japanese.pk)).content.decode()


def test_a_tampered_link_saves_nothing(client):
    user = RecipientProfileFactory().user
    response = client.post(path_for(user.pk)[:-3] + "xyz/", {"action": "save"})
    assert response.status_code in (400, 404)
    assert preferences_get(user.pk).version == 0
