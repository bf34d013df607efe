"""Webhook receiver sandbox with Standard Webhooks verification (signed by the reference library)."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess

pytestmark: list[pytest.MarkDecorator] = []

SECRET = "whsec_" + base64.b64encode(b"sandbox-webhook-secret-0123456789").decode()


def signed_post(
    url: str, msg_id: str, payload: dict[str, object], *, secret: str = SECRET, sent_at: float | None = None
) -> httpx.Response:
    body = orjson.dumps(payload)
    timestamp = datetime.fromtimestamp(time.time() if sent_at is None else sent_at, tz=UTC)
    signature = Webhook(secret).sign(msg_id, timestamp, body.decode())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }
    return httpx.post(url, content=body, headers=headers)


def test_unsigned_delivery_accepted_without_secret(sandbox: SandboxProcess, controls: dict[str, SandboxClient]) -> None:
    response = httpx.post(
        sandbox.url("webhook") + "/hooks/tenant-1?x=1", json={"type": "order.paid"}, headers={"webhook-id": "msg_1"}
    )
    assert response.status_code == 204
    (record,) = controls["webhook"].requests()
    assert (record["recipient"], record["idempotency_key"]) == ("/hooks/tenant-1", "msg_1")
    assert record["body"] == {"type": "order.paid"}
    assert record["path"] == "/hooks/tenant-1?x=1"


def test_standard_webhooks_signature_verification(sandbox: SandboxProcess, controls: dict[str, SandboxClient]) -> None:
    controls["webhook"].configure(options={"secret": SECRET})
    url = sandbox.url("webhook") + "/hooks/signed"
    assert signed_post(url, "msg_ok", {"n": 1}).status_code == 204
    wrong_secret = "whsec_" + base64.b64encode(b"another-secret").decode()
    forged = signed_post(url, "msg_bad", {"n": 2}, secret=wrong_secret)
    assert (forged.status_code, forged.json()["error"]) == (401, "no matching signature found")
    stale = signed_post(url, "msg_old", {"n": 3}, sent_at=time.time() - 3600)
    assert (stale.status_code, stale.json()["error"]) == (401, "message timestamp too old")
    unsigned = httpx.post(url, json={"n": 4})
    assert unsigned.status_code == 401
    stats = controls["webhook"].stats()
    assert (stats["accepted"], stats["errors"]) == (1, {"signature": 3})
    assert controls["webhook"].config()["options"]["secret"] == "***"


def test_rate_limit_is_503_with_retry_after(sandbox: SandboxProcess, controls: dict[str, SandboxClient]) -> None:
    controls["webhook"].configure(rate=2)
    url = sandbox.url("webhook") + "/hooks/busy"
    assert [httpx.post(url, json={}).status_code for _ in range(2)] == [204, 204]
    limited = httpx.post(url, json={})
    assert limited.status_code == 503
    assert limited.headers["retry-after"] == "1"
    assert controls["webhook"].stats()["rate_limited"] == 1


def test_path_triggers(sandbox: SandboxProcess, controls: dict[str, SandboxClient]) -> None:
    base = sandbox.url("webhook")
    assert [httpx.post(base + "/hooks/fail503-2/t", json={}).status_code for _ in range(3)] == [503, 503, 204]
    assert httpx.post(base + "/hooks/unregistered", json={}).status_code == 410
    assert httpx.post(base + "/hooks/invalid", json={}).status_code == 400
    assert httpx.get(base + "/hooks/x").status_code == 405
    # the same webhook-id accepted twice is a duplicate delivery
    for _ in range(2):
        httpx.post(base + "/hooks/dup", json={}, headers={"webhook-id": "msg_dup"})
    assert controls["webhook"].stats()["duplicates"]["keys"] == 1


def test_endpoints_verify_with_their_own_secrets(sandbox: SandboxProcess, controls: dict[str, SandboxClient]) -> None:
    own = "whsec_" + base64.b64encode(b"tenant-a-own-secret-0123456789ab").decode()
    rotated = "whsec_" + base64.b64encode(b"tenant-b-new-secret-0123456789ab").decode()
    controls["webhook"].configure(options={"secret": SECRET, "endpoint_secrets": {"/a": own, "/b": [rotated, SECRET]}})
    base = sandbox.url("webhook")
    assert signed_post(base + "/a/hook", "m1", {}, secret=own).status_code == 204
    assert signed_post(base + "/a/hook", "m2", {}, secret=SECRET).status_code == 401, "the global one is not /a's"
    assert signed_post(base + "/b/hook", "m3", {}, secret=rotated).status_code == 204
    assert signed_post(base + "/b/hook", "m4", {}, secret=SECRET).status_code == 204, "either secret of /b"
    assert signed_post(base + "/c/hook", "m5", {}, secret=SECRET).status_code == 204, "others: the global secret"
    assert controls["webhook"].config()["options"]["endpoint_secrets"] == "***"
    record = controls["webhook"].requests()[0]
    assert record["meta"]["webhook-signature"].startswith("v1,"), "the signature is recorded for the test to check"


def test_a_busy_endpoint_answers_429_with_the_seconds_left_then_accepts(
    sandbox: SandboxProcess, controls: dict[str, SandboxClient]
) -> None:
    base = sandbox.url("webhook")
    first = httpx.post(base + "/hooks/busy-2/slow", json={})
    assert (first.status_code, first.headers["retry-after"]) == (429, "2")
    assert httpx.post(base + "/hooks/other", json={}).status_code == 204, "other endpoints are not busy"
    time.sleep(1.1)
    again = httpx.post(base + "/hooks/busy-2/slow", json={})
    assert (again.status_code, again.headers["retry-after"]) == (429, "1")
    time.sleep(1.0)
    assert httpx.post(base + "/hooks/busy-2/slow", json={}).status_code == 204
    assert controls["webhook"].stats()["errors"] == {"busy": 2}
