"""The registry builds every adapter kind from settings, shares one per loop, and never leaks credentials."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from django.test import override_settings

from notifications.providers import registry
from notifications.providers.base import ProviderAdapter
from notifications.providers.email_anymail import AnymailEmailAdapter
from notifications.providers.email_sendgrid import SendGridEmailAdapter
from notifications.providers.email_smtp import SmtpEmailAdapter
from notifications.providers.inapp import InAppAdapter
from notifications.providers.push import PushRouter
from notifications.providers.push_apns import ApnsPushAdapter
from notifications.providers.push_fcm import FcmPushAdapter
from notifications.providers.results import SendOutcome
from notifications.providers.sms_twilio import TwilioSmsAdapter
from notifications.providers.transport import Http1Transport
from notifications.providers.webhook import WebhookAdapter
from tests.providers.conftest import push_message, run, service_account_json, sms_message, webhook_message

pytestmark = pytest.mark.filterwarnings("ignore::anymail.exceptions.AnymailNotSupportedWarning")

SECRETS = {
    "twilio": "twilio-token-SECRET",
    "webhook": "whsec_" + base64.b64encode(b"registry-test-webhook-secret-32!").decode(),
    "smtp": "smtp-password-SECRET",
}


@pytest.fixture
def provider_settings(tmp_path: Path, rsa_pem: tuple[str, str], ec_pem: tuple[str, str]):
    account = tmp_path / "fcm.json"
    account.write_text(service_account_json(rsa_pem[0], "http://127.0.0.1:9/token", "registry-project"))
    p8 = tmp_path / "AuthKey_KEY1234567.p8"
    p8.write_text(ec_pem[0])
    values = {
        "NOTIFICATIONS_FROM_EMAIL": "Shop <shop@example.com>",
        "ANYMAIL": {"SENDGRID_API_KEY": "SG.registry", "SENDGRID_API_URL": "http://127.0.0.1:9/v3/"},
        "EMAIL_SEND_THREADS": 7,
        "PROVIDER_TIMEOUT": 4.0,
        "SMTP_HOST": "smtp.internal",
        "SMTP_PORT": 2525,
        "SMTP_USERNAME": "relay",
        "SMTP_PASSWORD": SECRETS["smtp"],
        "SMTP_TIMEOUT": 3.0,
        "TWILIO_BASE_URL": "http://127.0.0.1:9",
        "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
        "TWILIO_AUTH_TOKEN": SECRETS["twilio"],
        "TWILIO_FROM_NUMBER": "+15550001111",
        "TWILIO_MAX_CONNECTIONS": 50,
        "FCM_BASE_URL": "http://127.0.0.1:9",
        "FCM_SERVICE_ACCOUNT_FILE": str(account),
        "FCM_PROJECT_ID": "",  # the project comes from the service account file
        "APNS_BASE_URL": "http://127.0.0.1:9",
        "APNS_KEY_FILE": str(p8),
        "APNS_KEY_ID": "KEY1234567",
        "APNS_TEAM_ID": "TEAM123456",
        "APNS_TOPIC": "com.example.shop",
        "APNS_MAX_CONNECTIONS": 2,
        "APNS_MAX_IN_FLIGHT": 20,
        "WEBHOOK_SIGNING_SECRET": SECRETS["webhook"],
        "WEBHOOK_MAX_PER_HOST": 20,
        "INAPP_BATCH_SIZE": 250,
    }
    with override_settings(**values):
        yield values


def test_every_kind_builds_from_settings(provider_settings: dict) -> None:
    async def scenario() -> dict[str, ProviderAdapter]:
        built = {kind: registry.build_adapter(kind) for kind in registry.ADAPTER_KINDS}
        for adapter in built.values():
            await adapter.aclose()
        return built

    built = run(scenario())
    assert set(built) == {"sendgrid", "anymail", "smtp", "twilio", "fcm", "apns", "push", "webhook", "inapp"}
    sendgrid = built["sendgrid"]
    assert isinstance(sendgrid, SendGridEmailAdapter) and (sendgrid.name, sendgrid.channel) == ("sendgrid", "email")
    assert sendgrid.api_url == "http://127.0.0.1:9/v3/" and sendgrid.deadline == 4.0
    anymail = built["anymail"]
    assert isinstance(anymail, AnymailEmailAdapter) and (anymail.max_workers, anymail.timeout) == (7, 4.0)
    smtp = built["smtp"]
    assert isinstance(smtp, SmtpEmailAdapter) and (smtp.host, smtp.port, smtp.timeout) == ("smtp.internal", 2525, 3.0)
    twilio = built["twilio"]
    assert isinstance(twilio, TwilioSmsAdapter) and twilio.channel == "sms"
    assert isinstance(twilio.client._transport, Http1Transport) and twilio.client._transport.max_connections == 50
    assert twilio.deadline == 4.0  # PROVIDER_TIMEOUT bounds the whole send(), as the worker's lease assumes
    assert (anymail.deadline, anymail.queue_timeout) == (None, 4.0)  # threads: bounded queue wait instead
    fcm = built["fcm"]
    assert isinstance(fcm, FcmPushAdapter) and fcm.project_id == "registry-project"
    apns = built["apns"]
    assert isinstance(apns, ApnsPushAdapter) and apns.topic == "com.example.shop"
    assert apns.max_in_flight == 20
    assert apns.deadline == 30.0  # APNS_TIMEOUT's default: late answers on the shared connection are not retried
    assert isinstance(built["push"], PushRouter) and set(built["push"].adapters) == {"fcm", "apns"}
    webhook = built["webhook"]
    assert isinstance(webhook, WebhookAdapter) and webhook.max_per_host == 20
    inapp = built["inapp"]
    assert isinstance(inapp, InAppAdapter) and inapp.batch_size == 250
    for kind, adapter in built.items():
        text = repr(adapter)
        assert all(secret not in text for secret in SECRETS.values()), kind
        assert "PRIVATE KEY" not in text and "SG.registry" not in text


def test_anymail_kind_follows_the_configured_esp(provider_settings: dict) -> None:
    with override_settings(EMAIL_BACKEND="anymail.backends.postmark.EmailBackend"):
        adapter = registry.build_adapter("anymail")
    assert (adapter.name, adapter.backend_path) == ("postmark", "anymail.backends.postmark.EmailBackend")
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend"):
        assert registry.build_adapter("anymail").name == "sendgrid"  # not an anymail backend: the default ESP
    run(adapter.aclose())


def test_adapter_for_shares_one_adapter_per_kind_per_loop(provider_settings: dict) -> None:
    async def scenario():
        first = registry.adapter_for("twilio")
        again = registry.adapter_for("twilio")
        push = registry.adapter_for("push")
        by_channel = registry.adapter_for_channel("sms")
        shared = push.adapters["fcm"] is registry.adapter_for("fcm")
        await registry.close_adapters()
        return first, again, by_channel, shared

    first, again, by_channel, shared = run(scenario())
    assert first is again is by_channel and shared
    second_loop = run(_adapter_in_new_loop())
    assert second_loop is not first  # a new loop gets its own pooled client
    with pytest.raises(registry.UnknownProviderError):
        registry.build_adapter("carrier-pigeon")


async def _adapter_in_new_loop() -> ProviderAdapter:
    adapter = registry.adapter_for("twilio")
    await registry.close_adapters()
    return adapter


def test_missing_credentials_are_config_errors_per_send_not_crashes() -> None:
    empty = {
        "TWILIO_ACCOUNT_SID": "",
        "TWILIO_AUTH_TOKEN": "",
        "FCM_SERVICE_ACCOUNT_FILE": "/nonexistent/fcm.json",
        "FCM_SERVICE_ACCOUNT_JSON": "",
        "APNS_KEY_FILE": "/nonexistent/AuthKey.p8",
        "APNS_KEY": "",
        "WEBHOOK_SIGNING_SECRET": "",
    }

    async def scenario():
        with override_settings(**empty):
            adapters = {kind: registry.build_adapter(kind) for kind in ("twilio", "fcm", "apns", "webhook")}
        results = {
            "twilio": await adapters["twilio"].send(sms_message("+15551234567")),
            "fcm": await adapters["fcm"].send(push_message(("fcm", "t"))),
            "apns": await adapters["apns"].send(push_message(("apns", "t"))),
            "webhook": await adapters["webhook"].send(webhook_message("http://127.0.0.1:9/hook")),
        }
        await asyncio.gather(*(a.aclose() for a in adapters.values()))
        return results

    results = run(scenario())
    assert {kind: r.outcome for kind, r in results.items()} == dict.fromkeys(results, SendOutcome.CONFIG_ERROR)


def test_channel_send_bound_is_the_longest_deadline_of_the_channels_providers(provider_settings: dict) -> None:
    """The worker's dedup lease is sized on it, so it must cover the slowest provider of the channel."""
    assert registry.channel_send_bound("push") == 30.0  # APNs (30) over FCM (PROVIDER_TIMEOUT, 4)
    assert registry.channel_send_bound("email") == 4.0  # EMAIL_SEND_TIMEOUT unset: PROVIDER_TIMEOUT; SMTP 3
    assert registry.channel_send_bound("inapp") == 4.0
    with override_settings(TWILIO_TIMEOUT=12.0):
        assert registry.channel_send_bound("sms") == 12.0
    with override_settings(PROVIDER_SEND_DEADLINE=50.0):
        assert registry.channel_send_bound("webhook") == 50.0
