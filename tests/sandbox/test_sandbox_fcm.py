"""FCM HTTP v1 sandbox and its OAuth2 JWT-bearer token endpoint."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess

pytestmark: list[pytest.MarkDecorator] = []

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def assertion(key: rsa.RSAPrivateKey, token_uri: str, **overrides: Any) -> str:
    """What google-auth's service-account credentials post to ``token_uri``."""
    now = int(time.time())
    claims = {
        "iss": "sender@proj.iam.gserviceaccount.com",
        "aud": token_uri,
        "iat": now,
        "exp": now + 3600,
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        **overrides,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "key-1"})


@pytest.fixture
def fcm(sandbox: SandboxProcess, rsa_key: rsa.RSAPrivateKey) -> httpx.Client:
    base = sandbox.url("fcm")
    with httpx.Client(base_url=base, timeout=5.0) as client:
        grant = client.post("/token", data={"grant_type": JWT_BEARER, "assertion": assertion(rsa_key, base + "/token")})
        assert grant.status_code == 200
        client.headers["Authorization"] = f"Bearer {grant.json()['access_token']}"
        yield client


def push(client: httpx.Client, token: str, **data: Any) -> httpx.Response:
    message = {"token": token, "notification": {"title": "Hi", "body": "There"}, "data": data}
    return client.post("/v1/projects/demo-proj/messages:send", json={"message": message})


def test_token_exchange_shape(sandbox: SandboxProcess, rsa_key: rsa.RSAPrivateKey) -> None:
    token_uri = sandbox.url("fcm") + "/token"
    grant = httpx.post(token_uri, data={"grant_type": JWT_BEARER, "assertion": assertion(rsa_key, token_uri)})
    assert grant.status_code == 200
    body = grant.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert (body["expires_in"], body["token_type"]) == (3599, "Bearer")
    bad_grant = httpx.post(token_uri, data={"grant_type": "password", "assertion": "x"})
    assert (bad_grant.status_code, bad_grant.json()["error"]) == (400, "unsupported_grant_type")
    garbage = httpx.post(token_uri, data={"grant_type": JWT_BEARER, "assertion": "not.a.jwt"})
    assert garbage.json() == {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    stale = assertion(rsa_key, token_uri, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    assert httpx.post(token_uri, data={"grant_type": JWT_BEARER, "assertion": stale}).json()["error"] == "invalid_grant"


def test_signature_checked_when_public_key_configured(
    sandbox: SandboxProcess, controls: dict[str, SandboxClient], rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    controls["fcm"].configure(options={"public_key_pem": pem.decode()})
    token_uri = sandbox.url("fcm") + "/token"
    good = httpx.post(token_uri, data={"grant_type": JWT_BEARER, "assertion": assertion(rsa_key, token_uri)})
    assert good.status_code == 200
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = httpx.post(token_uri, data={"grant_type": JWT_BEARER, "assertion": assertion(other, token_uri)})
    assert forged.json()["error_description"] == "Invalid JWT Signature."


def test_send_accepted_and_recorded(fcm: httpx.Client, controls: dict[str, SandboxClient]) -> None:
    response = push(fcm, "device-token-1", notification_id="n-9")
    assert response.status_code == 200
    name = response.json()["name"]
    assert name.startswith("projects/demo-proj/messages/0:")
    (record,) = controls["fcm"].requests()
    assert (record["recipient"], record["idempotency_key"], record["provider_id"]) == ("device-token-1", "n-9", name)
    assert record["body"]["message"]["notification"]["title"] == "Hi"
    assert controls["fcm"].stats()["tokens_issued"] == 1


def test_requires_issued_bearer_token(sandbox: SandboxProcess) -> None:
    url = sandbox.url("fcm") + "/v1/projects/demo-proj/messages:send"
    body = {"message": {"token": "t"}}
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401
    assert missing.json()["error"]["status"] == "UNAUTHENTICATED"
    forged = httpx.post(url, json=body, headers={"Authorization": "Bearer ya29.made-up"})
    assert forged.status_code == 401
    assert forged.json()["error"]["message"].startswith("Request had invalid authentication credentials.")


def test_invalid_and_unregistered_tokens(fcm: httpx.Client) -> None:
    unregistered = push(fcm, "tok-unregistered-1")
    assert unregistered.status_code == 404
    assert unregistered.json() == {
        "error": {
            "code": 404,
            "message": "Requested entity was not found.",
            "status": "NOT_FOUND",
            "details": [{"@type": FCM_ERROR, "errorCode": "UNREGISTERED"}],
        }
    }
    invalid = push(fcm, "tok-invalid-1")
    assert invalid.status_code == 400
    error = invalid.json()["error"]
    assert (error["status"], error["details"][0]["errorCode"]) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")


def test_fail_n_then_succeed(fcm: httpx.Client, controls: dict[str, SandboxClient]) -> None:
    responses = [push(fcm, "tok-fail5xx-2") for _ in range(3)]
    assert [r.status_code for r in responses] == [503, 503, 200]
    assert responses[0].json()["error"]["details"][0]["errorCode"] == "UNAVAILABLE"
    assert push(fcm, "tok-fail500-1").json()["error"]["status"] == "INTERNAL"
    stats = controls["fcm"].stats()
    assert (stats["accepted"], stats["errors"]) == (1, {"transient": 3})


def test_rate_limit_quota_exceeded(fcm: httpx.Client, controls: dict[str, SandboxClient]) -> None:
    controls["fcm"].configure(rate=2)
    assert [push(fcm, f"t{i}").status_code for i in range(2)] == [200, 200]
    limited = push(fcm, "t-late")
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert error["details"] == [{"@type": FCM_ERROR, "errorCode": "QUOTA_EXCEEDED"}]
    assert limited.headers["retry-after"] == "1"
    assert controls["fcm"].stats()["recorded"] == 2


def test_message_validation(fcm: httpx.Client) -> None:
    not_string = fcm.post("/v1/projects/demo-proj/messages:send", json={"message": {"token": "t", "data": {"n": 12}}})
    assert not_string.status_code == 400
    detail = not_string.json()["error"]["details"][0]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert detail["fieldViolations"][0]["field"] == "message.data[0].value"
    two_targets = fcm.post("/v1/projects/demo-proj/messages:send", json={"message": {"token": "t", "topic": "x"}})
    assert two_targets.status_code == 400
    validate_only = fcm.post("/v1/projects/p/messages:send", json={"message": {"token": "t"}, "validate_only": True})
    assert validate_only.json() == {"name": "projects/p/messages/fake_message_id"}
