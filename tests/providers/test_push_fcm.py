"""FCM HTTP v1 adapter against the FCM sandbox (OAuth2 JWT-bearer exchange verified with the key's public half)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from notifications.providers.credentials import Secret
from notifications.providers.message_fields import delivery_key
from notifications.providers.push_fcm import FcmPushAdapter, ServiceAccount
from notifications.providers.results import SendOutcome
from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess
from tests.providers.conftest import push_message, run, service_account_json, start_sandbox

PROJECT = "demo-project"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    yield from start_sandbox("fcm")


@pytest.fixture
def control(control: SandboxClient, rsa_pem: tuple[str, str]) -> SandboxClient:
    """The FCM sandbox checking the service account's signature, for one project."""
    control.configure(options={"public_key_pem": rsa_pem[1], "project": PROJECT})
    return control


@pytest.fixture
def account(sandbox: SandboxProcess, rsa_pem: tuple[str, str]) -> ServiceAccount:
    return ServiceAccount.from_json(service_account_json(rsa_pem[0], f"{sandbox.url('fcm')}/token", PROJECT))


def adapter(sandbox: SandboxProcess, account: ServiceAccount, **kwargs: object) -> FcmPushAdapter:
    return FcmPushAdapter(service_account=account, base_url=sandbox.url("fcm"), **kwargs)  # type: ignore[arg-type]


def test_happy_path_exchanges_a_token_and_sends_string_data(
    sandbox: SandboxProcess, control: SandboxClient, account: ServiceAccount
) -> None:
    message = push_message(("fcm", "token-aaa"), ("apns", "ios-device"), urgency="urgent", flags={"new": True})

    async def scenario():
        async with adapter(sandbox, account) as fcm:
            return await fcm.send(message), fcm.token_exchanges

    result, exchanges = run(scenario())
    assert result.outcome is SendOutcome.SENT and result.status_code == 200
    assert result.provider_message_id.startswith(f"projects/{PROJECT}/messages/")
    assert exchanges == 1 and control.stats()["tokens_issued"] == 1
    (record,) = control.requests()  # the APNs device is not FCM's business
    assert record["recipient"] == "token-aaa"
    assert record["idempotency_key"] == message["id"]
    sent = record["body"]["message"]
    assert sent["notification"] == {"title": "Shipped", "body": "Your order is on its way"}
    assert sent["data"] == {"order": "42", "flags": '{"new":true}', "notification_id": message["id"]}
    assert sent["android"] == {"priority": "HIGH"}


def test_concurrent_sends_share_one_token_exchange(
    sandbox: SandboxProcess, control: SandboxClient, account: ServiceAccount
) -> None:
    messages = [push_message(("fcm", f"token-{i}")) for i in range(50)]

    async def scenario():
        async with adapter(sandbox, account) as fcm:
            results = await asyncio.gather(*(fcm.send(m) for m in messages))
            return results, fcm.token_exchanges

    results, exchanges = run(scenario())
    assert all(r.outcome is SendOutcome.SENT for r in results)
    assert exchanges == 1 and control.stats()["tokens_issued"] == 1  # the lock stopped the stampede


def test_token_is_refreshed_five_minutes_before_expiry(
    sandbox: SandboxProcess, control: SandboxClient, account: ServiceAccount
) -> None:
    control.configure(options={"token_ttl": 360})  # expires_in 359 s: usable for 59 s before the margin
    offset = [0.0]

    async def scenario():
        async with adapter(sandbox, account, clock=lambda: time.time() + offset[0]) as fcm:
            await fcm.send(push_message(("fcm", "token-1")))
            await fcm.send(push_message(("fcm", "token-2")))
            before = fcm.token_exchanges
            offset[0] = 60.0  # a minute later the token is inside the 5-minute margin
            result = await fcm.send(push_message(("fcm", "token-3")))
            return before, fcm.token_exchanges, result

    before, after, result = run(scenario())
    assert (before, after) == (1, 2)
    assert result.outcome is SendOutcome.SENT
    assert control.stats()["tokens_issued"] == 2


def test_revoked_access_token_is_replaced_and_the_send_retried_once(
    sandbox: SandboxProcess, control: SandboxClient, account: ServiceAccount
) -> None:
    async def scenario():
        async with adapter(sandbox, account) as fcm:
            fcm._access_token, fcm._expires_at = Secret("ya29.revoked"), time.time() + 3000
            return await fcm.send(push_message(("fcm", "token-1"))), fcm.token_exchanges

    result, exchanges = run(scenario())
    assert result.outcome is SendOutcome.SENT and exchanges == 1
    stats = control.stats()
    assert (stats["received"], stats["accepted"], stats["errors"]) == (2, 1, {"auth": 1})


def test_devices_fan_out_and_dead_tokens_are_reported(
    sandbox: SandboxProcess, control: SandboxClient, account: ServiceAccount
) -> None:
    mixed = push_message(("fcm", "good-token"), ("fcm", "dead-unregistered"), ("fcm", "other-good"))
    dead = push_message(("fcm", "a-unregistered"), ("fcm", "b-unregistered"))

    async def scenario():
        async with adapter(sandbox, account) as fcm:
            return await fcm.send(mixed), await fcm.send(dead)

    mixed_result, dead_result = run(scenario())
    assert (mixed_result.outcome, mixed_result.invalid_tokens) == (SendOutcome.SENT, ["dead-unregistered"])
    assert mixed_result.provider_message_id.count("projects/") == 2
    assert (dead_result.outcome, dead_result.invalid_tokens) == (
        SendOutcome.INVALID_CONTACT,
        ["a-unregistered", "b-unregistered"],
    )
    keys = sorted(r["idempotency_key"] for r in control.requests())
    expected = sorted(delivery_key(mixed["id"], t, fanout=True) for t in ("good-token", "other-good"))
    assert keys == expected  # one stable key per (notification, device)
    assert control.stats()["duplicates"]["keys"] == 0


def test_error_triggers_map_to_outcomes(
    sandbox: SandboxProcess, control: SandboxClient, account: ServiceAccount
) -> None:
    retried = push_message(("fcm", "tok-fail5xx-1"))

    async def scenario():
        async with adapter(sandbox, account) as fcm:
            return {
                "invalid": await fcm.send(push_message(("fcm", "tok-invalid"))),
                "unregistered": await fcm.send(push_message(("fcm", "tok-unregistered"))),
                "5xx": await fcm.send(retried),
                "5xx again": await fcm.send(retried),
                "quota": await fcm.send(push_message(("fcm", "tok-fail429-1"))),
            }

    results = run(scenario())
    assert (results["invalid"].outcome, results["invalid"].error_code) == (SendOutcome.PERMANENT, "INVALID_ARGUMENT")
    unregistered = results["unregistered"]
    assert (unregistered.outcome, unregistered.error_code) == (SendOutcome.INVALID_CONTACT, "UNREGISTERED")
    assert unregistered.invalid_tokens == ["tok-unregistered"]
    assert (results["5xx"].outcome, results["5xx"].error_code) == (SendOutcome.TRANSIENT, "UNAVAILABLE")
    assert results["5xx again"].outcome is SendOutcome.SENT
    quota = results["quota"]
    assert (quota.outcome, quota.error_code, quota.retry_after) == (SendOutcome.RATE_LIMITED, "QUOTA_EXCEEDED", 60.0)


def test_contract_rate_limit_and_configuration_problems(
    sandbox: SandboxProcess, control: SandboxClient, account: ServiceAccount
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    control.configure(rate=1)
    other_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    forged = ServiceAccount.from_json(service_account_json(other_key, account.token_uri, PROJECT))

    async def scenario():
        async with (
            adapter(sandbox, account) as fcm,
            adapter(sandbox, forged) as wrong_key,
            FcmPushAdapter(service_account=None, project_id=PROJECT, base_url=sandbox.url("fcm")) as unconfigured,
        ):
            sent = await fcm.send(push_message(("fcm", "t1")))
            limited = await fcm.send(push_message(("fcm", "t2")))
            return (
                sent,
                limited,
                await wrong_key.send(push_message(("fcm", "t3"))),
                await unconfigured.send(push_message(("fcm", "t4"))),
            )

    sent, limited, wrong_key, unconfigured = run(scenario())
    assert sent.outcome is SendOutcome.SENT
    assert (limited.outcome, limited.retry_after) == (SendOutcome.RATE_LIMITED, 60.0)  # FCM: at least a minute
    assert (wrong_key.outcome, wrong_key.error_code) == (SendOutcome.CONFIG_ERROR, "invalid_grant")
    assert (unconfigured.outcome, unconfigured.error_code) == (SendOutcome.CONFIG_ERROR, "missing_credentials")


def test_message_without_fcm_devices_is_permanent(sandbox: SandboxProcess, account: ServiceAccount) -> None:
    async def scenario():
        async with adapter(sandbox, account) as fcm:
            return await fcm.send(push_message(("apns", "ios-only")))

    result = run(scenario())
    assert (result.outcome, result.error_code) == (SendOutcome.PERMANENT, "no_devices")
    fcm = adapter(sandbox, account)
    assert "PRIVATE KEY" not in repr(account) and "PRIVATE KEY" not in repr(fcm)
    run(fcm.aclose())
