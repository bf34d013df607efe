"""The push router sends each device through its platform's adapter and combines the outcomes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from notifications.providers.push import PushRouter
from notifications.providers.push_apns import ApnsPushAdapter
from notifications.providers.push_fcm import FcmPushAdapter, ServiceAccount
from notifications.providers.results import SendOutcome
from provider_sandbox.process import SandboxProcess
from tests.providers.conftest import push_message, run, service_account_json, start_sandbox


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    yield from start_sandbox("fcm", "apns")


def router(sandbox: SandboxProcess, rsa_pem: tuple[str, str], ec_pem: tuple[str, str]) -> PushRouter:
    account = ServiceAccount.from_json(service_account_json(rsa_pem[0], f"{sandbox.url('fcm')}/token"))
    fcm = FcmPushAdapter(service_account=account, base_url=sandbox.url("fcm"))
    apns = ApnsPushAdapter(
        signing_key=ec_pem[0], key_id="KEY1234567", team_id="TEAM123456", topic="com.example.shop",
        base_url=sandbox.url("apns"),
    )  # fmt: skip
    return PushRouter({"fcm": fcm, "apns": apns})


def test_devices_on_both_platforms(sandbox: SandboxProcess, rsa_pem: tuple[str, str], ec_pem: tuple[str, str]) -> None:
    with sandbox.client("fcm") as fcm_control, sandbox.client("apns") as apns_control:
        fcm_control.reset(config=True)
        apns_control.reset(config=True)

        async def scenario():
            async with router(sandbox, rsa_pem, ec_pem) as push:
                return (
                    await push.send(push_message(("fcm", "android-1"), ("apns", "ios-unregistered"))),
                    await push.send(push_message(("fcm", "a-unregistered"), ("apns", "b-unregistered"))),
                    await push.send(push_message(("apns", "ios-2"))),
                    await push.send(push_message(("fcm", "tok-fail5xx-1"), ("apns", "ios-unregistered-2"))),
                    await push.send(push_message(("web", "unknown-platform"))),
                )

        mixed, all_dead, ios_only, retry, unknown = run(scenario())
        assert (mixed.outcome, mixed.provider, mixed.invalid_tokens) == (SendOutcome.SENT, "push", ["ios-unregistered"])
        assert (all_dead.outcome, sorted(all_dead.invalid_tokens)) == (
            SendOutcome.INVALID_CONTACT,
            ["a-unregistered", "b-unregistered"],
        )
        assert (ios_only.outcome, ios_only.provider) == (SendOutcome.SENT, "apns")
        assert (retry.outcome, retry.invalid_tokens) == (SendOutcome.TRANSIENT, ["ios-unregistered-2"])
        assert (unknown.outcome, unknown.error_code) == (SendOutcome.PERMANENT, "no_devices")
        assert fcm_control.stats()["accepted"] == 1 and apns_control.stats()["accepted"] == 1


def test_router_declares_the_tightest_in_flight_limit_of_its_platforms(
    sandbox: SandboxProcess, rsa_pem: tuple[str, str], ec_pem: tuple[str, str]
) -> None:
    """A worker using the router (Provider kind `push`) must admit no more pushes than APNs has
    HTTP/2 streams for, as it does for a Provider of kind `apns`."""
    push = router(sandbox, rsa_pem, ec_pem)
    assert push.adapters["fcm"].max_in_flight is None
    assert push.max_in_flight == push.adapters["apns"].max_in_flight == 32
    assert push.requests_for(push_message(("apns", "a"), ("apns", "b"), ("fcm", "c"))) == 2
    assert push.requests_for(push_message(("fcm", "c"))) == 1
    assert PushRouter({"fcm": push.adapters["fcm"]}).max_in_flight is None
