"""Django's error reports (a DEBUG error page, an error e-mail's text) show no credential setting."""

import re
import secrets
import sys

import pytest
from django.test import RequestFactory
from django.views.debug import ExceptionReporter


def render_report() -> str:
    """The text and HTML Django renders for an error in a request (settings, frames, their locals)."""
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        reporter = ExceptionReporter(RequestFactory().get("/api/v1/events"), *sys.exc_info())
    return reporter.get_traceback_text() + reporter.get_traceback_html()


def marker(name: str) -> str:
    """A recognisable secret, made at run time (the report quotes source lines around its frames)."""
    return f"{name}-secret-{secrets.token_hex(2)}"


@pytest.fixture
def configured(settings) -> None:
    """Every credential-bearing setting holds a marked secret, as config/settings.py would read it."""
    settings.SECRET_KEY = marker("django")
    settings.TWILIO_AUTH_TOKEN = marker("twilio")
    settings.TWILIO_API_KEY_SECRET = marker("twiliokey")
    settings.SMTP_PASSWORD = marker("smtp")
    settings.WEBHOOK_SIGNING_SECRET = "whsec_" + marker("webhook")
    settings.APNS_KEY = f"-----BEGIN PRIVATE KEY-----\n{marker('apns')}\n-----END PRIVATE KEY-----"
    settings.FCM_SERVICE_ACCOUNT_JSON = '{"private_key": "' + marker("fcm") + '"}'
    settings.REDIS_URL = f"redis://:{marker('redis')}@redis.internal:6379/0"
    settings.DLQ_PAGE_WEBHOOK_URL = f"https://hooks.slack.com/services/T0/B0/{marker('page')}"
    settings.ANYMAIL = {**settings.ANYMAIL, "SENDGRID_API_KEY": marker("sendgrid"), "MAILGUN_API_KEY": marker("mg")}


def test_no_credential_setting_shows_in_an_error_report(configured) -> None:
    report = render_report()
    assert "a bug" in report and "INSTALLED_APPS" in report, "the report lists the settings"
    shown = sorted(set(re.findall(r"[a-z]+-secret-[0-9a-f]{4}", report)))
    assert not shown, f"the error report shows: {', '.join(shown)}"
