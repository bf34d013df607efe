"""SendGrid v3 mail/send sandbox over real HTTP/1.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from provider_sandbox.client import SandboxClient, SandboxError
from provider_sandbox.process import SandboxProcess

pytestmark: list[pytest.MarkDecorator] = []

AUTH = {"Authorization": "Bearer SG.test-key"}
Sender = Callable[..., httpx.Response]


def mail(to: str, notification_id: str | None = None, **extra: Any) -> dict[str, Any]:
    personalization: dict[str, Any] = {"to": [{"email": to}]}
    if notification_id:
        personalization["custom_args"] = {"notification_id": notification_id}
    return {
        "personalizations": [personalization],
        "from": {"email": "noreply@example.com", "name": "Platform"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi there"}],
        **extra,
    }


@pytest.fixture
def send(sandbox: SandboxProcess, http: httpx.Client) -> Sender:
    url = sandbox.url("sendgrid") + "/v3/mail/send"

    def _send(payload: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return http.post(url, json=payload, headers=headers if headers is not None else AUTH)

    return _send


def test_accepted_request_is_recorded(send: Sender, controls: dict[str, SandboxClient]) -> None:
    response = send(mail("alice@example.com", "n-1"))
    assert response.status_code == 202
    assert response.content == b""
    assert len(response.headers["x-message-id"]) == 22
    for header in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert response.headers[header].isdigit()
    (record,) = controls["sendgrid"].requests()
    assert record["recipient"] == "alice@example.com"
    assert record["idempotency_key"] == "n-1"
    assert record["provider_id"] == response.headers["x-message-id"]
    assert record["body"]["subject"] == "Hello"
    stats = controls["sendgrid"].stats()
    assert (stats["accepted"], stats["rate_limited"], stats["errors_total"]) == (1, 0, 0)


def test_auth_and_validation_errors_use_sendgrid_bodies(send: Sender, controls: dict[str, SandboxClient]) -> None:
    unauthorized = send(mail("a@example.com"), headers={})
    assert unauthorized.status_code == 401
    assert unauthorized.json() == {
        "errors": [
            {"message": "The provided authorization grant is invalid, expired, or revoked", "field": None, "help": None}
        ]
    }
    invalid = send({"personalizations": [], "subject": "x"})
    assert invalid.status_code == 400
    fields = {e["field"] for e in invalid.json()["errors"]}
    assert {"from.email", "personalizations", "content"} <= fields
    controls["sendgrid"].configure(options={"api_keys": ["SG.right"]})
    assert send(mail("a@example.com"), headers={"Authorization": "Bearer SG.wrong"}).status_code == 401
    assert send(mail("a@example.com"), headers={"Authorization": "Bearer SG.right"}).status_code == 202
    assert controls["sendgrid"].stats()["errors"] == {"auth": 2, "validation": 1}


def test_rate_limit_answers_429_with_reset_and_is_not_recorded(
    send: Sender, controls: dict[str, SandboxClient]
) -> None:
    controls["sendgrid"].configure(rate=5)
    statuses = [send(mail(f"user{i}@example.com")).status_code for i in range(5)]
    limited = send(mail("late@example.com"))
    assert statuses == [202] * 5
    assert limited.status_code == 429
    assert limited.json() == {"errors": [{"message": "too many requests", "field": None, "help": None}]}
    assert limited.headers["x-ratelimit-limit"] == "5"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["x-ratelimit-reset"]) >= int(time.time())
    stats = controls["sendgrid"].stats()
    assert (stats["accepted"], stats["rate_limited"], stats["recorded"]) == (5, 1, 5)
    assert "late@example.com" not in {r["recipient"] for r in controls["sendgrid"].requests()}


def test_max_one_second_window_equals_contract_rate(
    sandbox: SandboxProcess, controls: dict[str, SandboxClient]
) -> None:
    controls["sendgrid"].configure(rate=10)

    async def hammer() -> list[int]:
        async with httpx.AsyncClient(base_url=sandbox.url("sendgrid"), headers=AUTH) as client:
            statuses = []
            deadline = time.monotonic() + 1.4
            while time.monotonic() < deadline:
                batch = [client.post("/v3/mail/send", json=mail(f"u{i}@example.com")) for i in range(4)]
                statuses += [r.status_code for r in await asyncio.gather(*batch)]
                await asyncio.sleep(0.02)
            return statuses

    statuses = asyncio.run(hammer())
    stats = controls["sendgrid"].stats()
    assert stats["max_1s_window"] == 10
    assert stats["accepted"] == statuses.count(202) >= 11  # the window really slid
    assert stats["rate_limited"] == statuses.count(429) > 0
    assert sum(bucket["count"] for bucket in stats["per_second"]) == stats["accepted"]
    assert controls["sendgrid"].stats(window=0.5)["max_window"] <= 10


def test_deterministic_triggers(send: Sender, controls: dict[str, SandboxClient]) -> None:
    invalid = send(mail("someone-invalid@example.com"))
    assert invalid.status_code == 400
    assert invalid.json()["errors"][0]["field"] == "personalizations.0.to.0.email"
    assert send(mail("gone-unregistered@example.com")).status_code == 400
    retried = [send(mail("flaky-fail5xx-2@example.com")).status_code for _ in range(3)]
    assert retried == [503, 503, 202]
    assert send(mail("x-fail500-1@example.com")).status_code == 500
    assert [send(mail("t-fail429-1@example.com")).status_code for _ in range(2)] == [429, 202]
    errors = controls["sendgrid"].stats()["errors"]
    assert errors == {"bad_request": 1, "invalid_token": 1, "transient": 3, "throttled": 1}


def test_duplicates_by_idempotency_key(send: Sender, controls: dict[str, SandboxClient]) -> None:
    for key in ("n-1", "n-2", "n-1", "n-1"):
        assert send(mail("dup@example.com", key)).status_code == 202
    assert send(mail("hdr@example.com"), headers={**AUTH, "Idempotency-Key": "n-2"}).status_code == 202
    duplicates = controls["sendgrid"].stats()["duplicates"]
    assert duplicates["keys"] == 2
    assert duplicates["extra_requests"] == 3
    assert {d["key"]: d["count"] for d in duplicates["sample"]} == {"n-1": 3, "n-2": 2}


def test_latency_is_async_and_requests_overlap(sandbox: SandboxProcess, controls: dict[str, SandboxClient]) -> None:
    controls["sendgrid"].configure(latency={"kind": "fixed", "ms": 300})

    async def burst() -> float:
        async with httpx.AsyncClient(base_url=sandbox.url("sendgrid"), headers=AUTH) as client:
            started = time.monotonic()
            results = await asyncio.gather(
                *(client.post("/v3/mail/send", json=mail(f"p{i}@example.com")) for i in range(20))
            )
            assert {r.status_code for r in results} == {202}
            return time.monotonic() - started

    elapsed = asyncio.run(burst())
    assert 0.3 <= elapsed < 0.9  # 20 x 300 ms in parallel, not 6 s in series


def test_control_api_requests_paging_and_errors(send: Sender, controls: dict[str, SandboxClient]) -> None:
    for i in range(5):
        send(mail(f"page{i}@example.com", f"k{i}"))
    client = controls["sendgrid"]
    first = client.requests_page(since=0, limit=2)
    assert [r["idempotency_key"] for r in first["requests"]] == ["k0", "k1"]
    rest = client.requests(since=first["next_since"])
    assert [r["idempotency_key"] for r in rest] == ["k2", "k3", "k4"]
    assert [r["recipient"] for r in client.requests(recipient="page3@example.com")] == ["page3@example.com"]
    assert len(list(client.iter_requests(page_size=2))) == 5
    with pytest.raises(SandboxError) as excinfo:
        client.configure(errors={"transient": 2})
    assert excinfo.value.status == 400
    assert client.config()["errors"]["transient"] == 0
    client.reset()
    assert client.stats()["accepted"] == 0


def test_idempotency_key_from_anymail_shaped_custom_args(send: Sender, controls: dict[str, SandboxClient]) -> None:
    """anymail sends metadata as top-level custom_args and its own anymail_id per personalization."""
    payload = mail("a@example.com", custom_args={"notification_id": "n-top"})
    payload["personalizations"] = [
        {"to": [{"email": "a@example.com"}], "custom_args": {"anymail_id": "uuid-a"}},
        {"to": [{"email": "b@example.com"}], "custom_args": {"anymail_id": "uuid-b", "notification_id": "n-b"}},
    ]
    assert send(payload).status_code == 202
    (record,) = controls["sendgrid"].requests()
    assert record["idempotency_keys"] == ["n-top", "n-b"]
    assert record["recipients"] == ["a@example.com", "b@example.com"]
