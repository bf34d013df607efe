"""Twilio SMS adapter against the Twilio sandbox (one sandbox process for this module)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from notifications.providers.results import SendOutcome
from notifications.providers.sms_twilio import TwilioSmsAdapter
from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess
from tests.providers.conftest import run, sms_message, start_sandbox

ACCOUNT, TOKEN, FROM = "AC" + "0" * 32, "auth-token-123", "+15550001111"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    yield from start_sandbox("twilio")


def adapter(sandbox: SandboxProcess, **kwargs: object) -> TwilioSmsAdapter:
    options = {"account_sid": ACCOUNT, "auth_token": TOKEN, "from_number": FROM, "base_url": sandbox.url("twilio")}
    return TwilioSmsAdapter(**{**options, **kwargs})  # type: ignore[arg-type]


def test_happy_path_is_recorded_with_the_notification_id(sandbox: SandboxProcess, control: SandboxClient) -> None:
    control.configure(options={"accounts": {ACCOUNT: TOKEN}})  # the sandbox checks the exact credentials
    message = sms_message("+15551234567", "Your order shipped")

    async def scenario():
        async with adapter(sandbox, status_callback="https://hooks.example.com/twilio?tenant=7") as sms:
            return await sms.send(message)

    result = run(scenario())
    assert result.outcome is SendOutcome.SENT
    assert result.provider == "twilio" and result.status_code == 201
    assert result.provider_message_id.startswith("SM")
    (record,) = control.requests()
    assert record["idempotency_key"] == message["id"]
    assert record["provider_id"] == result.provider_message_id
    assert record["recipient"] == "+15551234567"
    form = record["body"]
    assert (form["From"], form["Body"]) == (FROM, "Your order shipped")
    callback = parse_qs(urlsplit(form["StatusCallback"]).query)
    assert callback == {"tenant": ["7"], "notification_id": [message["id"]]}


def test_messaging_service_without_status_callback(sandbox: SandboxProcess, control: SandboxClient) -> None:
    async def scenario():
        async with adapter(sandbox, from_number="", messaging_service_sid="MG" + "1" * 32) as sms:
            return await sms.send(sms_message("+15551230000"))

    assert run(scenario()).outcome is SendOutcome.SENT
    (record,) = control.requests()
    assert record["body"]["MessagingServiceSid"] == "MG" + "1" * 32
    assert "StatusCallback" not in record["body"] and "From" not in record["body"]


def test_error_triggers_map_to_outcomes(sandbox: SandboxProcess, control: SandboxClient) -> None:
    async def scenario():
        async with adapter(sandbox) as sms:
            return {
                "invalid": await sms.send(sms_message("+15005550001")),
                "stop": await sms.send(sms_message("+15005550004")),
                "fail5xx first": await sms.send(sms_message("+15005555100")),
                "fail5xx second": await sms.send(sms_message("+15005555100")),
                "fail429": await sms.send(sms_message("+15005559100")),
            }

    results = run(scenario())
    assert (results["invalid"].outcome, results["invalid"].error_code) == (SendOutcome.INVALID_CONTACT, "21211")
    assert (results["stop"].outcome, results["stop"].error_code) == (SendOutcome.INVALID_CONTACT, "21610")
    assert (results["fail5xx first"].outcome, results["fail5xx first"].error_code) == (SendOutcome.TRANSIENT, "20503")
    assert results["fail5xx second"].outcome is SendOutcome.SENT
    throttled = results["fail429"]
    assert (throttled.outcome, throttled.error_code, throttled.retry_after) == (SendOutcome.RATE_LIMITED, "20429", 1.0)


def test_contract_rate_limit_gives_rate_limited_with_retry_after(
    sandbox: SandboxProcess, control: SandboxClient
) -> None:
    control.configure(rate=2)

    async def scenario():
        async with adapter(sandbox) as sms:
            return [await sms.send(sms_message(f"+1555123{i:04d}")) for i in range(4)]

    results = run(scenario())
    assert [r.outcome for r in results[:2]] == [SendOutcome.SENT, SendOutcome.SENT]
    limited = [r for r in results if r.outcome is SendOutcome.RATE_LIMITED]
    assert limited and all(r.retry_after is not None and 0 < r.retry_after <= 1 for r in limited)
    assert control.stats()["rate_limited"] == len(limited)


def test_bad_credentials_and_missing_configuration_are_config_errors(
    sandbox: SandboxProcess, control: SandboxClient
) -> None:
    control.configure(options={"accounts": {ACCOUNT: TOKEN}})

    async def scenario():
        async with adapter(sandbox, auth_token="wrong") as wrong, adapter(sandbox, from_number="") as no_sender:
            return await wrong.send(sms_message("+15551234567")), await no_sender.send(sms_message("+15551234567"))

    wrong, no_sender = run(scenario())
    assert (wrong.outcome, wrong.error_code, wrong.status_code) == (SendOutcome.CONFIG_ERROR, "20003", 401)
    assert (no_sender.outcome, no_sender.error_code) == (SendOutcome.CONFIG_ERROR, "missing_sender")
    assert control.stats()["received"] == 1  # nothing is posted without a sender


def test_poison_message_and_unreachable_provider(sandbox: SandboxProcess, control: SandboxClient) -> None:
    broken = sms_message("+15551234567")
    broken["to"] = {}

    async def scenario():
        async with adapter(sandbox) as sms, adapter(sandbox, base_url="http://127.0.0.1:9") as down:
            return await sms.send(broken), await down.send(sms_message("+15551234567"))

    poison, unreachable = run(scenario())
    assert (poison.outcome, poison.error_code) == (SendOutcome.PERMANENT, "invalid_message")
    assert (unreachable.outcome, unreachable.error_code) == (SendOutcome.TRANSIENT, "connect_error")


def test_credentials_stay_out_of_reprs(sandbox: SandboxProcess) -> None:
    sms = adapter(sandbox)
    assert TOKEN not in repr(sms) and "***" in repr(sms)
    run(sms.aclose())


@pytest.mark.slow
def test_500_concurrent_sends_at_100ms_latency_finish_well_under_5s(
    sandbox: SandboxProcess, control: SandboxClient
) -> None:
    control.configure(latency=100)
    messages = [sms_message(f"+1555{i:07d}") for i in range(500)]

    async def scenario():
        async with adapter(sandbox) as sms:
            started = time.perf_counter()
            results = await sms.send_many(messages)
            return results, time.perf_counter() - started

    results, elapsed = run(scenario())
    assert all(r.outcome is SendOutcome.SENT for r in results)
    assert elapsed < 5.0, f"500 sends took {elapsed:.2f}s: sends are not concurrent"  # sequential would be 50 s
    stats = control.stats()
    assert stats["accepted"] == 500 and stats["duplicates"]["keys"] == 0
    print(f"\n500 Twilio sends at 100 ms latency: {elapsed:.2f}s ({500 / elapsed:.0f}/s)")
