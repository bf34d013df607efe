"""One-click unsubscribe (RFC 8058): signed links work, tampered/expired/security links do not."""

from __future__ import annotations

import time

import pytest
from django.core import signing

from notifications.channels import ALL_CHANNELS
from preferences import unsubscribe
from preferences.cache import preferences_get
from preferences.models import PreferenceDocument
from preferences.unsubscribe import make_unsubscribe_token, read_unsubscribe_token, unsubscribe_headers, unsubscribe_url

pytestmark = pytest.mark.django_db
ONE_CLICK = "List-Unsubscribe=One-Click"


def post_one_click(client, url):
    """What a mail client sends (RFC 8058 §3.2): a form-encoded POST without cookies."""
    return client.post(url, data=ONE_CLICK, content_type="application/x-www-form-urlencoded")


def path_of(url: str) -> str:
    return url.removeprefix("http://127.0.0.1:8000")


def test_signed_link_unsubscribes_from_every_channel(api_client, user_a):
    url = unsubscribe_url(user_a.pk, "marketing")
    assert url.startswith("http://127.0.0.1:8000/api/v1/unsubscribe/")
    response = post_one_click(api_client, path_of(url))
    assert response.status_code == 200
    assert response.json() == {"unsubscribed": True, "category": "marketing"}
    state = preferences_get(user_a.pk)
    assert state.categories["marketing"] == dict.fromkeys(ALL_CHANNELS, False)
    assert state.version == 1
    # Idempotent: a second click changes nothing (no new version).
    assert post_one_click(api_client, path_of(url)).status_code == 200
    assert PreferenceDocument.objects.get(user=user_a).version == 1


def test_get_shows_a_confirmation_page_and_changes_nothing(api_client, user_a):
    url = path_of(unsubscribe_url(user_a.pk, "product"))
    response = api_client.get(url)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    body = response.content.decode()
    assert '<form method="post">' in body and "Product updates" in body
    assert not PreferenceDocument.objects.filter(user=user_a).exists()
    # The page's button posts the same form a mail client does; a browser gets HTML back.
    response = api_client.post(url, {"List-Unsubscribe": "One-Click"}, format="multipart", HTTP_ACCEPT="text/html")
    assert response.status_code == 200 and "You are unsubscribed" in response.content.decode()
    assert preferences_get(user_a.pk).channel_setting("product", "email") is False


def test_tampered_link_is_refused(api_client, user_a, user_b):
    token = make_unsubscribe_token(user_a.pk, "marketing")
    _payload, rest = token.split(":", 1)
    forged_payload = signing.b64_encode(f'{{"u":{user_b.pk},"c":"marketing"}}'.encode()).decode()
    for bad in (forged_payload + ":" + rest, token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "garbage"):
        response = post_one_click(api_client, f"/api/v1/unsubscribe/{bad}")
        assert response.status_code == 404  # no such link (the schema documents it)
        assert response.json()["detail"] == "invalid link"
    assert api_client.get("/api/v1/unsubscribe/garbage").status_code == 404
    assert not PreferenceDocument.objects.exists()


def test_expired_link_is_refused(api_client, user_a, settings):
    class SignedLongAgo(signing.TimestampSigner):
        def timestamp(self):
            return signing.b62_encode(int(time.time()) - 31 * 24 * 3600)

    old = SignedLongAgo(salt=unsubscribe.SALT).sign_object({"u": user_a.pk, "c": "marketing"})
    response = post_one_click(api_client, f"/api/v1/unsubscribe/{old}")
    assert response.status_code == 410 and response.json()["code"] == "expired"
    assert api_client.get(f"/api/v1/unsubscribe/{old}").status_code == 410
    with pytest.raises(unsubscribe.UnsubscribeTokenExpired):
        read_unsubscribe_token(old)
    settings.UNSUBSCRIBE_MAX_AGE = 40 * 24 * 3600  # the maximum age is configurable
    assert read_unsubscribe_token(old).user_id == user_a.pk
    assert not PreferenceDocument.objects.exists()


def test_security_category_cannot_be_unsubscribed(api_client, user_a):
    with pytest.raises(ValueError, match="cannot be unsubscribed"):
        unsubscribe_url(user_a.pk, "security")
    # Even a correctly signed security token (minted by hand) is refused.
    token = signing.TimestampSigner(salt=unsubscribe.SALT).sign_object({"u": user_a.pk, "c": "security"})
    response = post_one_click(api_client, f"/api/v1/unsubscribe/{token}")
    assert response.status_code == 400 and response.json()["code"] == "mandatory_category"


def test_headers_for_the_email_worker(user_a, settings):
    settings.PUBLIC_BASE_URL = "https://notify.example.com/"
    headers = unsubscribe_headers(user_a.pk, "marketing")
    assert headers["List-Unsubscribe-Post"] == ONE_CLICK
    assert headers["List-Unsubscribe"].startswith("<https://notify.example.com/api/v1/unsubscribe/")
    token = headers["List-Unsubscribe"].rsplit("/", 1)[1].rstrip(">")
    assert read_unsubscribe_token(token) == unsubscribe.UnsubscribeTarget(user_id=user_a.pk, category="marketing")


def test_one_click_needs_no_csrf_token_or_login(user_a):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    response = post_one_click(client, path_of(unsubscribe_url(user_a.pk, "social")))
    assert response.status_code == 200
    assert preferences_get(user_a.pk).channel_setting("social", "push") is False


@pytest.mark.parametrize(("user_id", "category"), [(1, "marketing"), (10**12, "transactional"), (42, "product")])
def test_token_is_byte_for_byte_what_djangos_signer_makes(user_id, category, settings, monkeypatch):
    frozen = 1_790_000_000
    monkeypatch.setattr(time, "time", lambda: frozen)
    token = make_unsubscribe_token(user_id, category)
    assert token == signing.TimestampSigner(salt=unsubscribe.SALT).sign_object({"u": user_id, "c": category})
    settings.SECRET_KEY = "another-secret-" + "x" * 40  # the cached signing key follows the setting
    assert make_unsubscribe_token(user_id, category) != token
    assert make_unsubscribe_token(user_id, category) == signing.TimestampSigner(salt=unsubscribe.SALT).sign_object(
        {"u": user_id, "c": category}
    )


def test_url_maker_and_url_agree_with_reverse():
    from django.urls import reverse

    url = unsubscribe.unsubscribe_url_maker()(7, "marketing")
    token = url.rsplit("/", 2)[-2] if url.endswith("/") else url.rsplit("/", 1)[-1]
    assert url == "http://127.0.0.1:8000" + reverse("preferences:unsubscribe", kwargs={"token": token})
    assert read_unsubscribe_token(token).user_id == 7
