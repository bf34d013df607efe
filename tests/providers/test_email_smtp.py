"""SMTP e-mail adapter (Django's SMTP backend in a thread pool) against the aiosmtpd sandbox."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator

import pytest

from notifications.providers.email_smtp import SmtpEmailAdapter
from notifications.providers.message_fields import derived_uuid
from notifications.providers.results import SendOutcome
from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess
from tests.providers.conftest import email_message, run, start_sandbox


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    yield from start_sandbox("smtp")


def adapter(sandbox: SandboxProcess, **kwargs: object) -> SmtpEmailAdapter:
    options: dict[str, object] = {"host": "127.0.0.1", "port": sandbox.ports["smtp"], "max_workers": 4, **kwargs}
    return SmtpEmailAdapter(from_email="Shop <shop@example.com>", **options)  # type: ignore[arg-type]


def test_happy_path_carries_notification_id_and_stable_message_id(
    sandbox: SandboxProcess, control: SandboxClient
) -> None:
    message = email_message("ada@example.com", html="<p>On its way.</p>", list_unsubscribe="https://u.example.com/x")

    async def scenario():
        async with adapter(sandbox) as mail:
            return await mail.send(message)

    result = run(scenario())
    expected_message_id = f"<{derived_uuid(message['id'])}@example.com>"
    assert (result.outcome, result.provider, result.provider_message_id) == (
        SendOutcome.SENT,
        "smtp",
        expected_message_id,
    )
    (record,) = control.requests(raw=True)
    assert record["idempotency_key"] == message["id"]
    assert record["recipients"] == ["ada@example.com"]
    parsed = email.message_from_string(record["raw"], policy=email.policy.default)
    assert parsed["Message-ID"] == expected_message_id
    assert parsed["X-Notification-Id"] == message["id"]
    assert parsed["Subject"] == "Your order shipped"
    assert parsed["List-Unsubscribe"] == "<https://u.example.com/x>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed.get_body(("html",)).get_content().strip() == "<p>On its way.</p>"


def test_rcpt_refusals_map_to_outcomes(sandbox: SandboxProcess, control: SandboxClient) -> None:
    retried = email_message("fail5xx-1@example.com")

    async def scenario():
        async with adapter(sandbox, max_workers=1) as mail:  # one session: every refusal leaves it usable
            return {
                "bounce": await mail.send(email_message("bounce@example.com")),
                "unregistered": await mail.send(email_message("unregistered@example.com")),
                "invalid": await mail.send(email_message("invalid@example.com")),
                "4xx": await mail.send(retried),
                "4xx again": await mail.send(retried),
                "throttled": await mail.send(email_message("fail429-1@example.com")),
            }, list(mail._connections)

    results, sessions = run(scenario())
    assert (results["bounce"].outcome, results["bounce"].status_code) == (SendOutcome.INVALID_CONTACT, 550)
    assert results["unregistered"].outcome is SendOutcome.INVALID_CONTACT
    assert (results["invalid"].outcome, results["invalid"].status_code) == (SendOutcome.INVALID_CONTACT, 553)
    assert (results["4xx"].outcome, results["4xx"].status_code) == (SendOutcome.TRANSIENT, 451)
    assert results["4xx again"].outcome is SendOutcome.SENT
    assert results["throttled"].outcome is SendOutcome.RATE_LIMITED
    assert len(sessions) == 1  # the same SMTP session served all six


def test_rate_limit_at_mail_from_is_rate_limited(sandbox: SandboxProcess, control: SandboxClient) -> None:
    control.configure(rate=1)

    async def scenario():
        async with adapter(sandbox, max_workers=1) as mail:
            return [await mail.send(email_message(f"user{i}@example.com")) for i in range(3)]

    results = run(scenario())
    assert results[0].outcome is SendOutcome.SENT
    assert {r.outcome for r in results[1:]} == {SendOutcome.RATE_LIMITED}
    assert results[1].status_code == 451


def test_unreachable_server_is_transient_and_a_dropped_session_is_reopened(
    sandbox: SandboxProcess, control: SandboxClient
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]

    async def scenario():
        async with adapter(sandbox, port=free_port) as down:
            unreachable = await down.send(email_message("a@example.com"))
        async with adapter(sandbox, max_workers=1) as mail:
            first = await mail.send(email_message("a@example.com"))
            (backend,) = mail._connections
            backend.connection.sock.close()  # the server (or a NAT) dropped our idle session
            second = await mail.send(email_message("b@example.com"))
        return unreachable, first, second

    unreachable, first, second = run(scenario())
    assert (unreachable.outcome, unreachable.error_code) == (SendOutcome.TRANSIENT, "connect_error")
    assert first.outcome is SendOutcome.SENT and second.outcome is SendOutcome.SENT
    assert control.stats()["accepted"] == 2


def test_password_stays_out_of_repr(sandbox: SandboxProcess) -> None:
    mail = adapter(sandbox, username="relay", password="s3cret-pass")
    assert "s3cret-pass" not in repr(mail)
    run(mail.aclose())


def test_sends_that_wait_too_long_for_a_thread_are_not_sent(sandbox: SandboxProcess, control: SandboxClient) -> None:
    control.configure(latency=300)

    async def scenario():
        async with adapter(sandbox, max_workers=1, queue_timeout=0.1) as mail:
            return await mail.send_many([email_message(f"user{i}@example.com") for i in range(3)])

    results = run(scenario())
    assert sorted((r.outcome, r.error_code) for r in results) == [
        (SendOutcome.SENT, ""),
        (SendOutcome.TRANSIENT, "pool_timeout"),
        (SendOutcome.TRANSIENT, "pool_timeout"),
    ]
    assert control.stats()["accepted"] == 1  # the skipped ones never reached the server
