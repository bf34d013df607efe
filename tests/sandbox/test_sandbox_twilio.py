"""Twilio Messages API sandbox over real HTTP/1.1 (form-encoded, HTTP Basic)."""

from __future__ import annotations

import re

import httpx
import pytest

from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess

pytestmark: list[pytest.MarkDecorator] = []

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "auth-token"


@pytest.fixture
def twilio(sandbox: SandboxProcess) -> httpx.Client:
    with httpx.Client(base_url=sandbox.url("twilio"), auth=(SID, TOKEN), timeout=5.0) as client:
        yield client


def send(client: httpx.Client, to: str, body: str = "Your code is 1234", **extra: str) -> httpx.Response:
    return client.post(
        f"/2010-04-01/Accounts/{SID}/Messages.json", data={"To": to, "From": "+15550001111", "Body": body, **extra}
    )


def test_accepted_message_resource(twilio: httpx.Client, controls: dict[str, SandboxClient]) -> None:
    response = send(twilio, "+15551234567", "hello nid:n-42")
    assert response.status_code == 201
    resource = response.json()
    assert re.fullmatch(r"SM[0-9a-f]{32}", resource["sid"])
    assert resource["status"] == "queued"
    assert resource["account_sid"] == SID
    assert (resource["to"], resource["from"], resource["body"]) == ("+15551234567", "+15550001111", "hello nid:n-42")
    assert resource["uri"] == f"/2010-04-01/Accounts/{SID}/Messages/{resource['sid']}.json"
    assert resource["date_created"].endswith("+0000")
    assert resource["num_segments"] == "1" and resource["direction"] == "outbound-api"
    (record,) = controls["twilio"].requests()
    assert record["recipient"] == "+15551234567"
    assert record["idempotency_key"] == "n-42"  # from the Body
    assert record["provider_id"] == resource["sid"]
    assert record["body"]["Body"] == "hello nid:n-42"


def test_messaging_service_and_status_callback_key(twilio: httpx.Client, controls: dict[str, SandboxClient]) -> None:
    response = twilio.post(
        f"/2010-04-01/Accounts/{SID}/Messages.json",
        data={
            "To": "+15551234567",
            "MessagingServiceSid": "MG" + "1" * 32,
            "Body": "x",
            "StatusCallback": "https://app.example.com/cb?notification_id=n-7",
        },
    )
    assert response.status_code == 201
    assert response.json()["status"] == "accepted"  # Twilio's answer when a Messaging Service picks the sender
    assert controls["twilio"].requests()[0]["idempotency_key"] == "n-7"


def test_auth_errors(sandbox: SandboxProcess, controls: dict[str, SandboxClient]) -> None:
    url = sandbox.url("twilio") + f"/2010-04-01/Accounts/{SID}/Messages.json"
    form = {"To": "+15551234567", "From": "+15550001111", "Body": "x"}
    missing = httpx.post(url, data=form)
    assert missing.status_code == 401
    assert missing.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert httpx.post(url, data=form, auth=("ACother", "x")).status_code == 401
    controls["twilio"].configure(options={"accounts": {SID: "secret"}})
    assert httpx.post(url, data=form, auth=(SID, "wrong")).status_code == 401
    assert httpx.post(url, data=form, auth=(SID, "secret")).status_code == 201


def test_validation_errors(twilio: httpx.Client) -> None:
    path = f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert twilio.post(path, data={"From": "+15550001111", "Body": "x"}).json()["code"] == 21604
    assert twilio.post(path, data={"To": "+15551234567", "Body": "x"}).json()["code"] == 21603
    assert twilio.post(path, data={"To": "+15551234567", "From": "+15550001111"}).json()["code"] == 21602
    bad_to = send(twilio, "not a number")
    assert (bad_to.status_code, bad_to.json()["code"]) == (400, 21211)
    assert twilio.get(f"/2010-04-01/Accounts/{SID}/Nope.json").json()["code"] == 20404


def test_rate_limit_429_with_retry_after(twilio: httpx.Client, controls: dict[str, SandboxClient]) -> None:
    controls["twilio"].configure(rate=3)
    assert [send(twilio, f"+1555123456{i}").status_code for i in range(3)] == [201, 201, 201]
    limited = send(twilio, "+15551234599")
    assert limited.status_code == 429
    assert limited.json() == {
        "code": 20429,
        "message": "Too Many Requests",
        "more_info": "https://www.twilio.com/docs/errors/20429",
        "status": 429,
    }
    assert limited.headers["retry-after"] == "1"
    stats = controls["twilio"].stats()
    assert (stats["accepted"], stats["rate_limited"], stats["max_1s_window"]) == (3, 1, 3)


def test_triggers_invalid_unsubscribed_and_fail_n(twilio: httpx.Client) -> None:
    invalid = send(twilio, "+15005550001")
    assert invalid.status_code == 400
    assert invalid.json() == {
        "code": 21211,
        "message": "The 'To' number +15005550001 is not a valid phone number.",
        "more_info": "https://www.twilio.com/docs/errors/21211",
        "status": 400,
    }
    assert send(twilio, "+15551234567-invalid").json()["code"] == 21211
    blocked = send(twilio, "+15005550004")
    assert (blocked.status_code, blocked.json()["code"]) == (400, 21610)
    assert send(twilio, "+1555unregistered0000").json()["code"] == 21610
    flaky = [send(twilio, "+15005555200") for _ in range(3)]
    assert [r.status_code for r in flaky] == [503, 503, 201]
    assert flaky[0].json()["code"] == 20503
    assert [send(twilio, "+15551230000-fail5xx-1").status_code for _ in range(2)] == [503, 201]
    assert [send(twilio, "+15005559100").status_code for _ in range(2)] == [429, 201]
