"""anymail (SendGrid backend) e-mail adapter against the SendGrid sandbox."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from notifications.providers.email_anymail import AnymailEmailAdapter
from notifications.providers.results import SendOutcome
from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess
from tests.providers.conftest import email_message, run, start_sandbox

pytestmark = pytest.mark.filterwarnings("ignore::anymail.exceptions.AnymailNotSupportedWarning")

API_KEY = "SG.test-key"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    yield from start_sandbox("sendgrid")


def adapter(sandbox: SandboxProcess, *, api_key: str = API_KEY, **kwargs: object) -> AnymailEmailAdapter:
    options: dict[str, object] = {"max_workers": 8, **kwargs}
    return AnymailEmailAdapter(
        from_email="Shop <shop@example.com>",
        backend_options={"api_key": api_key, "api_url": f"{sandbox.url('sendgrid')}/v3/"},
        **options,  # type: ignore[arg-type]
    )


def test_happy_path_records_the_notification_id_and_unsubscribe_headers(
    sandbox: SandboxProcess, control: SandboxClient
) -> None:
    control.configure(options={"api_keys": [API_KEY]})
    message = email_message(
        "ada@example.com", html="<p>On its way.</p>", list_unsubscribe="https://shop.example.com/u/abc"
    )

    async def scenario():
        async with adapter(sandbox) as mail:
            assert mail.name == "sendgrid"
            return await mail.send(message)

    result = run(scenario())
    assert (result.outcome, result.provider, result.status_code) == (SendOutcome.SENT, "sendgrid", 202)
    assert result.provider_message_id  # anymail's message id (its anymail_id for SendGrid)
    (record,) = control.requests()
    assert record["idempotency_key"] == message["id"]
    body = record["body"]
    assert body["custom_args"]["notification_id"] == message["id"]
    assert body["personalizations"][0]["to"] == [{"email": "ada@example.com"}]
    assert body["from"] == {"email": "shop@example.com", "name": "Shop"}
    assert body["subject"] == "Your order shipped"
    assert {c["type"] for c in body["content"]} == {"text/plain", "text/html"}
    headers = body["headers"]
    assert headers["List-Unsubscribe"] == "<https://shop.example.com/u/abc>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["X-Notification-Id"] == message["id"]


def test_error_triggers_map_to_outcomes(sandbox: SandboxProcess, control: SandboxClient) -> None:
    retried = email_message("fail5xx-1@example.com")

    async def scenario():
        async with adapter(sandbox) as mail:
            return {
                "invalid": await mail.send(email_message("invalid@example.com")),
                "unregistered": await mail.send(email_message("unregistered@example.com")),
                "5xx first": await mail.send(retried),
                "5xx second": await mail.send(retried),
                "429": await mail.send(email_message("fail429-1@example.com")),
            }

    results = run(scenario())
    invalid = results["invalid"]
    assert (invalid.outcome, invalid.error_code) == (SendOutcome.INVALID_CONTACT, "personalizations.0.to.0.email")
    assert results["unregistered"].outcome is SendOutcome.INVALID_CONTACT
    assert (results["5xx first"].outcome, results["5xx first"].status_code) == (SendOutcome.TRANSIENT, 503)
    assert results["5xx second"].outcome is SendOutcome.SENT
    throttled = results["429"]
    assert throttled.outcome is SendOutcome.RATE_LIMITED and throttled.retry_after is not None
    assert [r["idempotency_key"] for r in control.requests()] == [retried["id"]]  # only accepted sends are recorded


def test_contract_rate_limit_waits_until_x_ratelimit_reset(sandbox: SandboxProcess, control: SandboxClient) -> None:
    control.configure(rate=1)

    async def scenario():
        async with adapter(sandbox) as mail:
            first = await mail.send(email_message("a@example.com"))
            second = await mail.send(email_message("b@example.com"))
            return first, second

    first, second = run(scenario())
    assert first.outcome is SendOutcome.SENT
    assert (second.outcome, second.status_code) == (SendOutcome.RATE_LIMITED, 429)
    assert second.retry_after is not None and 0 <= second.retry_after <= 2.0  # X-RateLimit-Reset (epoch) - now


def test_bad_api_key_is_config_error_and_unreachable_is_transient(
    sandbox: SandboxProcess, control: SandboxClient
) -> None:
    control.configure(options={"api_keys": [API_KEY]})

    async def scenario():
        async with adapter(sandbox, api_key="SG.wrong") as wrong:
            bad_key = await wrong.send(email_message("a@example.com"))
        down = AnymailEmailAdapter(
            from_email="shop@example.com",
            backend_options={"api_key": API_KEY, "api_url": "http://127.0.0.1:9/v3/"},
            max_workers=1,
        )
        async with down:
            unreachable = await down.send(email_message("a@example.com"))
        async with adapter(sandbox, api_key="") as no_key:  # e.g. SENDGRID_API_KEY unset in production
            missing = await no_key.send(email_message("a@example.com"))
        return bad_key, unreachable, missing

    bad_key, unreachable, missing = run(scenario())
    assert (bad_key.outcome, bad_key.status_code) == (SendOutcome.CONFIG_ERROR, 401)
    assert (unreachable.outcome, unreachable.error_code) == (SendOutcome.TRANSIENT, "connect_error")
    assert (missing.outcome, missing.error_code) == (SendOutcome.CONFIG_ERROR, "missing_credentials")


def test_invalid_messages_are_rejected_before_sending(sandbox: SandboxProcess, control: SandboxClient) -> None:
    no_subject = email_message("a@example.com")
    no_subject["content"].pop("subject")

    async def scenario():
        async with adapter(sandbox) as mail:
            return await mail.send(no_subject), await mail.send(email_message("not-an-address"))

    no_subject_result, bad_address = run(scenario())
    assert (no_subject_result.outcome, no_subject_result.error_code) == (SendOutcome.PERMANENT, "invalid_message")
    assert bad_address.outcome is SendOutcome.INVALID_CONTACT
    assert control.stats()["received"] == 0


def test_one_backend_per_pool_thread_is_reused(sandbox: SandboxProcess, control: SandboxClient) -> None:
    async def scenario():
        mail = adapter(sandbox, max_workers=4)
        async with mail:
            results = await mail.send_many([email_message(f"user{i}@example.com") for i in range(40)])
            return results, list(mail._connections)

    results, backends = run(scenario())
    assert all(r.outcome is SendOutcome.SENT for r in results)
    assert 1 <= len(backends) <= 4  # one opened backend (requests session) per thread, not per send
    assert all(b.session is None for b in backends)  # closed by aclose()
    assert control.stats()["accepted"] == 40
    assert threading.active_count() < 50
