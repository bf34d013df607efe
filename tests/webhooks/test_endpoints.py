"""Registered webhook endpoints: the service's checks, URL matching, and an admin that never shows a secret."""

import base64

import pytest
from django.core.exceptions import ValidationError

from notifications.webhooks.directory import EndpointDirectory
from notifications.webhooks.models import WebhookEndpoint
from notifications.webhooks.secrets import fingerprint, normalise_url, url_origin
from notifications.webhooks.services import webhook_endpoint_save

pytestmark = pytest.mark.django_db

OLD = "whsec_" + base64.b64encode(b"tenant-old-webhook-secret-012345").decode()
NEW = "whsec_" + base64.b64encode(b"tenant-new-webhook-secret-012345").decode()


@pytest.fixture(scope="session", autouse=True)
def kafka_topics() -> str:
    """Shadows the project-wide autouse Kafka fixture: endpoints do not touch Kafka."""
    return "webhook-endpoint-tests-without-kafka."


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("", "needs a signing secret"),
        ("c2VjcmV0", "starts with 'whsec_'"),
        ("whsec_not base64!", "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes, not 5"),
    ],
)
def test_a_bad_secret_is_refused_with_the_field_and_the_reason_never_the_secret(secret, reason):
    with pytest.raises(ValidationError) as caught:
        webhook_endpoint_save(url="https://hooks.example.com/a", new_secret=secret)
    [message] = caught.value.message_dict["new_secret"]
    assert reason in message
    assert not secret or secret not in message


def test_a_bad_url_is_refused():
    with pytest.raises(ValidationError) as caught:
        webhook_endpoint_save(url="ftp://hooks.example.com/a", new_secret=OLD)
    assert caught.value.message_dict == {"url": ["Enter an http(s) URL."]}


def test_urls_are_compared_normalised():
    assert normalise_url("HTTPS://Hooks.Example.com:443/a?b=1#frag") == "https://hooks.example.com/a?b=1"
    assert normalise_url("http://hooks.example.com") == "http://hooks.example.com/"
    assert url_origin("https://user:pw@Hooks.Example.com/a") == "https://hooks.example.com:443"
    webhook_endpoint_save(url="HTTPS://Hooks.Example.com/a", new_secret=OLD)
    directory = EndpointDirectory()
    directory.refresh()
    assert directory.lookup("https://hooks.example.com:443/a#x") is not None
    assert directory.lookup("https://hooks.example.com/b") is None
    with pytest.raises(ValidationError, match="Another endpoint has this URL"):
        webhook_endpoint_save(url="https://hooks.example.com/a", new_secret=NEW)


def test_a_rotation_keeps_the_previous_secret_and_a_replacement_does_not():
    endpoint = webhook_endpoint_save(url="https://hooks.example.com/a", new_secret=OLD)
    endpoint = webhook_endpoint_save(endpoint=endpoint, url=endpoint.url, new_secret=NEW)
    assert endpoint.secrets == [NEW, OLD]
    endpoint = webhook_endpoint_save(endpoint=endpoint, url=endpoint.url, new_secret=OLD, keep_previous_secrets=False)
    assert endpoint.secrets == [OLD]
    endpoint = webhook_endpoint_save(endpoint=endpoint, url=endpoint.url, description="renamed")
    assert endpoint.secrets == [OLD], "no new secret: the secrets stay"
    assert OLD not in repr(endpoint) and OLD not in str(endpoint)


def test_the_admin_takes_a_secret_write_only_and_shows_only_fingerprints(admin_client):
    response = admin_client.post(
        "/admin/webhooks/webhookendpoint/add/",
        {"url": "https://hooks.example.com/a", "description": "tenant a", "active": "on", "new_secret": OLD},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secrets == [OLD]
    response = admin_client.post(
        f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/",
        {"url": endpoint.url, "active": "on", "new_secret": NEW, "keep_previous_secrets": "on"},
    )
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.secrets == [NEW, OLD]
    pages = [
        admin_client.get("/admin/webhooks/webhookendpoint/").content.decode(),
        admin_client.get(f"/admin/webhooks/webhookendpoint/{endpoint.pk}/change/").content.decode(),
    ]
    for page in pages:
        for secret in (OLD, NEW):
            assert secret.removeprefix("whsec_") not in page
    assert fingerprint(NEW) in pages[1] and fingerprint(OLD) in pages[1]

    response = admin_client.post(
        "/admin/webhooks/webhookendpoint/",
        {"action": "retire_previous_secrets", "_selected_action": [endpoint.pk]},
    )
    assert response.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.secrets == [NEW]


def test_the_admin_refuses_a_bad_secret_with_the_reason(admin_client):
    response = admin_client.post(
        "/admin/webhooks/webhookendpoint/add/",
        {"url": "https://hooks.example.com/a", "new_secret": "whsec_" + base64.b64encode(b"short").decode()},
    )
    assert response.status_code == 200
    assert "24 to 64 bytes" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_an_unusable_stored_secret_is_left_out_and_logged_without_its_value(caplog):
    broken = "whsec_" + base64.b64encode(b"too-short").decode()
    WebhookEndpoint.objects.create(url="https://hooks.example.com/a", secrets=[broken, OLD])
    directory = EndpointDirectory()
    directory.refresh()
    entry = directory.lookup("https://hooks.example.com/a")
    assert entry is not None and len(entry.signers) == 1
    assert "secret unusable" in caplog.text
    logged = " ".join(str(record.__dict__) for record in caplog.records)  # the message and its extras
    assert "secret_index" in logged and broken.removeprefix("whsec_") not in logged
    assert OLD.removeprefix("whsec_") not in repr(entry)
