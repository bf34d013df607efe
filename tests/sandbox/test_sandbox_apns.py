"""APNs sandbox over HTTP/2 cleartext with prior knowledge (httpx http2=True, http1=False)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess

pytestmark: list[pytest.MarkDecorator] = []

TEAM, KEY_ID, TOPIC = "TEAM123456", "KEY1234567", "com.example.app"


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def provider_token(key: ec.EllipticCurvePrivateKey, iat: int | None = None) -> str:
    return jwt.encode(
        {"iss": TEAM, "iat": int(time.time()) if iat is None else iat}, key, algorithm="ES256", headers={"kid": KEY_ID}
    )


@pytest.fixture
def apns(sandbox: SandboxProcess, ec_key: ec.EllipticCurvePrivateKey) -> httpx.Client:
    headers = {
        "authorization": f"bearer {provider_token(ec_key)}",
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
        "apns-priority": "10",
    }
    with httpx.Client(base_url=sandbox.url("apns"), http1=False, http2=True, headers=headers, timeout=5.0) as client:
        yield client


def push(client: httpx.Client, token: str, apns_id: str | None = None, **headers: str) -> httpx.Response:
    payload: dict[str, Any] = {"aps": {"alert": {"title": "Hi", "body": "There"}}, "notification_id": "n-1"}
    extra = {"apns-id": apns_id} if apns_id else {}
    return client.post(f"/3/device/{token}", json=payload, headers={**extra, **headers})


def test_accepted_push_echoes_apns_id(apns: httpx.Client, controls: dict[str, SandboxClient]) -> None:
    apns_id = str(uuid.uuid4()).upper()
    response = push(apns, "a" * 64, apns_id)
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["apns-id"] == apns_id
    generated = push(apns, "b" * 64)
    assert uuid.UUID(generated.headers["apns-id"])
    first, second = controls["apns"].requests()
    assert (first["recipient"], first["idempotency_key"], first["provider_id"]) == ("a" * 64, apns_id, apns_id)
    assert second["idempotency_key"] is None  # APNs generated the id: no client idempotency key
    assert first["meta"]["topic"] == TOPIC
    assert first["body"]["aps"]["alert"]["title"] == "Hi"


def test_unregistered_and_bad_device_token(apns: httpx.Client) -> None:
    gone = push(apns, "tok-unregistered-1")
    assert gone.status_code == 410
    body = gone.json()
    assert body["reason"] == "Unregistered"
    assert abs(body["timestamp"] - time.time() * 1000) < 60_000
    bad = push(apns, "tok-invalid-1")
    assert (bad.status_code, bad.json()) == (400, {"reason": "BadDeviceToken"})


def test_provider_token_and_header_checks(apns: httpx.Client, ec_key: ec.EllipticCurvePrivateKey) -> None:
    missing = push(apns, "c" * 64, authorization="")
    assert (missing.status_code, missing.json()["reason"]) == (403, "MissingProviderToken")
    garbage = push(apns, "c" * 64, authorization="bearer nope")
    assert garbage.json()["reason"] == "InvalidProviderToken"
    old = push(apns, "c" * 64, authorization=f"bearer {provider_token(ec_key, int(time.time()) - 7200)}")
    assert (old.status_code, old.json()["reason"]) == (403, "ExpiredProviderToken")
    assert push(apns, "c" * 64, **{"apns-topic": ""}).json()["reason"] == "MissingTopic"
    assert push(apns, "c" * 64, **{"apns-priority": "7"}).json()["reason"] == "BadPriority"
    assert push(apns, "c" * 64, "not-a-uuid").json()["reason"] == "BadMessageId"
    assert push(apns, "c" * 64, **{"apns-push-type": "fax"}).json()["reason"] == "InvalidPushType"
    assert apns.get("/3/device/x").json()["reason"] == "MethodNotAllowed"


def test_rate_limit_and_fail_n(apns: httpx.Client, controls: dict[str, SandboxClient]) -> None:
    assert [push(apns, "tok-fail5xx-1").status_code for _ in range(2)] == [503, 200]
    controls["apns"].configure(rate=2)
    controls["apns"].reset()  # empty the limiter window (config is kept)
    assert [push(apns, f"d{i}").status_code for i in range(2)] == [200, 200]
    limited = push(apns, "d-late")
    assert (limited.status_code, limited.json()) == (429, {"reason": "TooManyRequests"})
    stats = controls["apns"].stats()
    assert (stats["accepted"], stats["rate_limited"]) == (2, 1)


def test_streams_are_multiplexed_with_latency(
    sandbox: SandboxProcess, controls: dict[str, SandboxClient], ec_key: ec.EllipticCurvePrivateKey
) -> None:
    controls["apns"].configure(latency_ms=300)
    headers = {"authorization": f"bearer {provider_token(ec_key)}", "apns-topic": TOPIC}

    async def burst() -> float:
        async with httpx.AsyncClient(base_url=sandbox.url("apns"), http1=False, http2=True, headers=headers) as client:
            started = time.monotonic()
            results = await asyncio.gather(
                *(client.post(f"/3/device/tok{i}", json={"aps": {"badge": i}}) for i in range(10))
            )
            assert {r.status_code for r in results} == {200}
            return time.monotonic() - started

    assert asyncio.run(burst()) < 0.9  # one connection, 10 concurrent streams of 300 ms


def test_control_api_over_http1_and_large_h2_bodies(
    apns: httpx.Client, sandbox: SandboxProcess, controls: dict[str, SandboxClient]
) -> None:
    big = {"aps": {"alert": "x" * 3500}}
    for i in range(40):
        assert apns.post(f"/3/device/big{i}", json=big).status_code == 200
    assert controls["apns"].stats()["accepted"] == 40  # HTTP/1.1 control client on the HTTP/2 port
    over_h2 = apns.get("/_sandbox/requests", params={"limit": 100})  # ~150 KB: needs HTTP/2 flow control
    assert over_h2.status_code == 200
    assert over_h2.json()["count"] == 40
    wrong_protocol = httpx.post(sandbox.url("apns") + "/3/device/x", json={})
    assert wrong_protocol.status_code == 505
