"""APNs adapter against the HTTP/2 APNs sandbox (ES256 provider tokens verified with the key's public half)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from notifications.providers.message_fields import delivery_key, derived_uuid
from notifications.providers.push_apns import ApnsPushAdapter
from notifications.providers.results import SendOutcome
from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess
from tests.providers.conftest import push_message, run, start_sandbox

TEAM, KEY_ID, TOPIC = "TEAM123456", "KEY1234567", "com.example.shop"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    yield from start_sandbox("apns")


@pytest.fixture
def control(control: SandboxClient, ec_pem: tuple[str, str]) -> SandboxClient:
    """The APNs sandbox checking the provider token's signature, team, key and topic."""
    control.configure(options={"public_key_pem": ec_pem[1], "team_id": TEAM, "key_id": KEY_ID, "topics": [TOPIC]})
    return control


def adapter(sandbox: SandboxProcess, ec_pem: tuple[str, str], **kwargs: object) -> ApnsPushAdapter:
    options: dict[str, object] = {
        "signing_key": ec_pem[0],
        "key_id": KEY_ID,
        "team_id": TEAM,
        "topic": TOPIC,
        "base_url": sandbox.url("apns"),
        **kwargs,
    }
    return ApnsPushAdapter(**options)  # type: ignore[arg-type]


def test_happy_path_over_http2_with_a_derived_apns_id(
    sandbox: SandboxProcess, control: SandboxClient, ec_pem: tuple[str, str]
) -> None:
    message = push_message(("apns", "a" * 64), ("fcm", "android-device"), urgency="urgent")
    captured: list[str] = []

    async def record_version(response: httpx.Response) -> None:
        captured.append(response.http_version)

    async def scenario():
        async with adapter(sandbox, ec_pem) as apns:
            apns.client.event_hooks["response"].append(record_version)
            return await apns.send(message)

    result = run(scenario())
    apns_id = str(derived_uuid(message["id"]))
    assert (result.outcome, result.status_code) == (SendOutcome.SENT, 200)
    assert result.provider_message_id.lower() == apns_id
    assert captured == ["HTTP/2"]
    (record,) = control.requests()
    assert record["recipient"] == "a" * 64
    assert record["idempotency_key"] == apns_id  # the provider (and the sandbox) dedupe on apns-id
    meta = record["meta"]
    assert (meta["apns-topic"], meta["apns-push-type"], meta["apns-priority"]) == (TOPIC, "alert", "10")
    assert record["body"] == {
        "aps": {"alert": {"title": "Shipped", "body": "Your order is on its way"}},
        "order": 42,
        "notification_id": message["id"],
    }


def test_provider_token_is_reused_and_refreshed_only_when_old(
    sandbox: SandboxProcess, control: SandboxClient, ec_pem: tuple[str, str]
) -> None:
    offset = [-2500.0]  # the first token is minted "41 minutes ago"
    headers: list[str] = []

    async def record_token(request: httpx.Request) -> None:
        headers.append(request.headers["authorization"])

    async def scenario():
        async with adapter(sandbox, ec_pem, clock=lambda: time.time() + offset[0], token_refresh=2400) as apns:
            apns.client.event_hooks["request"].append(record_token)
            first = [await apns.send(push_message(("apns", f"{i:064x}"))) for i in range(5)]
            minted_once = apns.tokens_minted
            offset[0] = 0.0  # now the token is 41.7 minutes old: past the 40-minute refresh age
            later = [await apns.send(push_message(("apns", f"{i + 10:064x}"))) for i in range(5)]
            return first + later, minted_once, apns.tokens_minted

    results, minted_once, minted = run(scenario())
    assert all(r.outcome is SendOutcome.SENT for r in results)
    assert (minted_once, minted) == (1, 2)
    assert len(set(headers[:5])) == 1 and len(set(headers[5:])) == 1 and headers[0] != headers[5]
    claims = jwt.decode(headers[5].split()[1], options={"verify_signature": False})
    assert claims["iss"] == TEAM and abs(claims["iat"] - time.time()) < 5
    assert jwt.get_unverified_header(headers[5].split()[1])["kid"] == KEY_ID


def test_expired_provider_token_is_refreshed_and_the_push_retried_once(
    sandbox: SandboxProcess, control: SandboxClient, ec_pem: tuple[str, str]
) -> None:
    async def scenario():
        async with adapter(sandbox, ec_pem) as apns:
            # A token APNs considers expired (iat over an hour ago) that our cache still believes fresh.
            stale = jwt.encode(
                {"iss": TEAM, "iat": int(time.time()) - 4000}, ec_pem[0], algorithm="ES256", headers={"kid": KEY_ID}
            )
            apns._token, apns._token_iat = stale, time.time()
            return await apns.send(push_message(("apns", "b" * 64))), apns.tokens_minted

    result, minted = run(scenario())
    assert result.outcome is SendOutcome.SENT and minted == 1
    stats = control.stats()
    assert (stats["received"], stats["accepted"], stats["errors"]) == (2, 1, {"auth": 1})


def test_invalid_provider_token_from_a_fresh_token_is_config_error_without_a_retry(
    sandbox: SandboxProcess, control: SandboxClient, ec_pem: tuple[str, str]
) -> None:
    async def scenario():
        async with adapter(sandbox, ec_pem, team_id="WRONGTEAM1") as apns:
            return await apns.send(push_message(("apns", "c" * 64)))

    result = run(scenario())
    assert (result.outcome, result.error_code, result.status_code) == (
        SendOutcome.CONFIG_ERROR,
        "InvalidProviderToken",
        403,
    )
    assert control.stats()["received"] == 1  # re-signing with the same bad team id would not help


def test_device_answers_map_to_outcomes(
    sandbox: SandboxProcess, control: SandboxClient, ec_pem: tuple[str, str]
) -> None:
    retried = push_message(("apns", "tok-fail5xx-1"))
    fanout = push_message(("apns", "good-1"), ("apns", "gone-unregistered"))

    async def scenario():
        async with adapter(sandbox, ec_pem) as apns:
            return {
                "bad token": await apns.send(push_message(("apns", "tok-invalid"))),
                "gone": await apns.send(push_message(("apns", "tok-unregistered"))),
                "5xx": await apns.send(retried),
                "5xx again": await apns.send(retried),
                "429": await apns.send(push_message(("apns", "tok-fail429-1"))),
                "fanout": await apns.send(fanout),
            }

    results = run(scenario())
    bad = results["bad token"]
    assert (bad.outcome, bad.error_code, bad.invalid_tokens) == (
        SendOutcome.INVALID_CONTACT,
        "BadDeviceToken",
        ["tok-invalid"],
    )
    gone = results["gone"]
    assert (gone.outcome, gone.status_code, gone.error_code) == (SendOutcome.INVALID_CONTACT, 410, "Unregistered")
    assert "token invalid since" in gone.message
    assert (results["5xx"].outcome, results["5xx"].error_code) == (SendOutcome.TRANSIENT, "ServiceUnavailable")
    assert results["5xx again"].outcome is SendOutcome.SENT
    assert (results["429"].outcome, results["429"].error_code) == (SendOutcome.RATE_LIMITED, "TooManyRequests")
    assert (results["fanout"].outcome, results["fanout"].invalid_tokens) == (SendOutcome.SENT, ["gone-unregistered"])
    keys = {r["recipient"]: r["idempotency_key"] for r in control.requests()}
    assert keys["tok-fail5xx-1"] == str(derived_uuid(retried["id"]))  # the retry reused the same apns-id
    assert keys["good-1"] == str(derived_uuid(delivery_key(fanout["id"], "good-1", fanout=True)))


def test_configuration_problems(sandbox: SandboxProcess, control: SandboxClient, ec_pem: tuple[str, str]) -> None:
    async def scenario():
        async with (
            adapter(sandbox, ec_pem, topic="com.example.other") as wrong_topic,
            adapter(sandbox, ec_pem, signing_key="") as no_key,
            adapter(sandbox, ec_pem, signing_key="not a pem") as bad_key,
        ):
            return (
                await wrong_topic.send(push_message(("apns", "d" * 64))),
                await no_key.send(push_message(("apns", "d" * 64))),
                await bad_key.send(push_message(("apns", "d" * 64))),
            )

    wrong_topic, no_key, bad_key = run(scenario())
    assert (wrong_topic.outcome, wrong_topic.error_code) == (SendOutcome.CONFIG_ERROR, "TopicDisallowed")
    assert (no_key.outcome, no_key.error_code) == (SendOutcome.CONFIG_ERROR, "missing_credentials")
    assert (bad_key.outcome, bad_key.error_code) == (SendOutcome.CONFIG_ERROR, "bad_signing_key")
    apns = adapter(sandbox, ec_pem)
    assert "PRIVATE KEY" not in repr(apns)
    run(apns.aclose())


@pytest.mark.slow
def test_many_concurrent_pushes_multiplex_over_few_connections(
    sandbox: SandboxProcess, control: SandboxClient, ec_pem: tuple[str, str]
) -> None:
    control.configure(latency=100)
    messages = [push_message(("apns", f"{i:064x}")) for i in range(300)]

    async def scenario():
        async with adapter(sandbox, ec_pem, max_connections=2) as apns:
            started = time.perf_counter()
            results = await apns.send_many(messages)
            return results, time.perf_counter() - started, apns.tokens_minted

    results, elapsed, minted = run(scenario())
    assert all(r.outcome is SendOutcome.SENT for r in results)
    assert minted == 1
    assert elapsed < 5.0, f"300 pushes took {elapsed:.2f}s: streams are not multiplexed"
    print(f"\n300 APNs pushes at 100 ms latency over <=2 HTTP/2 connections: {elapsed:.2f}s ({300 / elapsed:.0f}/s)")
