"""SMTP sandbox (aiosmtpd) driven with the standard library's smtplib, controlled over HTTP."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import pytest

from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess

pytestmark: list[pytest.MarkDecorator] = []


def message(to: str, notification_id: str | None = "n-1", subject: str = "Welcome") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "noreply@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    if notification_id:
        msg["X-Notification-Id"] = notification_id
    msg.set_content("Hello from the platform")
    return msg


@pytest.fixture
def smtp(sandbox: SandboxProcess) -> smtplib.SMTP:
    with smtplib.SMTP("127.0.0.1", sandbox.ports["smtp"], timeout=5) as client:
        yield client


def test_message_recorded(smtp: smtplib.SMTP, controls: dict[str, SandboxClient]) -> None:
    refused = smtp.send_message(message("alice@example.com"))
    assert refused == {}
    (record,) = controls["smtp"].requests()
    assert record["recipients"] == ["alice@example.com"]
    assert record["idempotency_key"] == "n-1"
    assert record["body"]["subject"] == "Welcome"
    assert record["body"]["text"].strip() == "Hello from the platform"
    assert record["meta"]["mail_from"] == "noreply@example.com"
    assert controls["smtp"].stats()["accepted"] == 1


def test_bounce_address_gets_550(smtp: smtplib.SMTP, controls: dict[str, SandboxClient]) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as excinfo:
        smtp.send_message(message("bounce@example.com"))
    code, reply = excinfo.value.recipients["bounce@example.com"]
    assert code == 550
    assert reply.startswith(b"5.1.1")
    # one good, one bouncing recipient: the message is delivered to the good one only
    refused = smtp.sendmail(
        "noreply@example.com", ["ok@example.com", "hard-bounce@example.com"], message("ok@example.com").as_bytes()
    )
    assert refused["hard-bounce@example.com"][0] == 550
    assert controls["smtp"].requests()[0]["recipients"] == ["ok@example.com"]
    assert controls["smtp"].stats()["errors"] == {"invalid_token": 2}


def test_markers_transient_and_invalid(smtp: smtplib.SMTP) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as first:
        smtp.send_message(message("retry-fail5xx-1@example.com"))
    assert first.value.recipients["retry-fail5xx-1@example.com"][0] == 451
    assert smtp.send_message(message("retry-fail5xx-1@example.com")) == {}
    with pytest.raises(smtplib.SMTPRecipientsRefused) as invalid:
        smtp.send_message(message("user-invalid@example.com"))
    assert invalid.value.recipients["user-invalid@example.com"][0] == 553


def test_custom_rule_and_rate_limit_at_mail_from(smtp: smtplib.SMTP, controls: dict[str, SandboxClient]) -> None:
    controls["smtp"].configure(
        rate=2, options={"rules": [{"pattern": "^full@", "code": 552, "message": "5.2.2 Mailbox full"}]}
    )
    with pytest.raises(smtplib.SMTPRecipientsRefused) as full:
        smtp.send_message(message("full@example.com"))
    assert full.value.recipients["full@example.com"] == (552, b"5.2.2 Mailbox full")
    smtp.rset()
    smtp.send_message(message("a@example.com"))
    with pytest.raises(smtplib.SMTPSenderRefused) as limited:
        smtp.send_message(message("b@example.com"))
    assert limited.value.smtp_code == 451
    stats = controls["smtp"].stats()
    assert (stats["accepted"], stats["rate_limited"], stats["max_1s_window"]) == (1, 1, 1)


def test_auth_can_be_enabled(sandbox: SandboxProcess, controls: dict[str, SandboxClient]) -> None:
    controls["smtp"].configure(options={"auth": {"mailer": "s3cret"}})
    with smtplib.SMTP("127.0.0.1", sandbox.ports["smtp"], timeout=5) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("mailer", "wrong")
        client.login("mailer", "s3cret")
        assert client.send_message(message("c@example.com")) == {}
