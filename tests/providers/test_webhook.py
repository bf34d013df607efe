"""Webhook adapter against the Standard Webhooks receiver sandbox (which verifies signatures)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notifications.providers.results import SendOutcome
from notifications.providers.webhook import WebhookAdapter
from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess
from tests.providers.conftest import run, start_sandbox, webhook_message

SECRET = "whsec_" + base64.b64encode(b"provider-tests-webhook-secret-32").decode()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    yield from start_sandbox("webhook", webhook_secret=SECRET)


def test_signed_delivery_is_verified_and_recorded_under_the_notification_id(
    sandbox: SandboxProcess, control: SandboxClient
) -> None:
    message = webhook_message(f"{sandbox.url('webhook')}/hooks/tenant-1?x=1", {"order": 42, "items": [1, 2]})

    async def scenario():
        async with WebhookAdapter(signing_secret=SECRET) as hooks:
            return await hooks.send(message)

    result = run(scenario())
    assert (result.outcome, result.status_code, result.provider_message_id) == (SendOutcome.SENT, 204, message["id"])
    (record,) = control.requests()
    assert record["idempotency_key"] == message["id"]  # webhook-id: what receivers dedupe on
    assert record["recipient"] == "/hooks/tenant-1"
    assert record["body"] == {"order": 42, "items": [1, 2]}
    assert control.stats()["errors"].get("signature", 0) == 0


def test_signature_verifies_with_standardwebhooks_on_the_receiving_side() -> None:
    captured: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return httpx.Response(200)

    message = webhook_message("https://receiver.example.com/hooks", {"order": 42, "note": "ünïcode"})

    async def scenario():
        client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
        async with WebhookAdapter(signing_secret=SECRET, client=client) as hooks:
            return await hooks.send(message)

    assert run(scenario()).outcome is SendOutcome.SENT
    (request,) = captured
    headers = dict(request.headers)
    assert headers["webhook-id"] == message["id"]
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["content-type"] == "application/json"
    assert Webhook(SECRET).verify(request.content, headers) == {"order": 42, "note": "ünïcode"}
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another-secret-entirely-32bytes!").decode()).verify(
            request.content, headers
        )
    tampered = orjson.dumps({"order": 43, "note": "ünïcode"})
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, headers)


def test_receiver_answers_map_to_outcomes(sandbox: SandboxProcess, control: SandboxClient) -> None:
    base = sandbox.url("webhook")
    retried = webhook_message(f"{base}/hooks/fail5xx-1")

    async def scenario():
        async with WebhookAdapter(signing_secret=SECRET) as hooks:
            return {
                "gone": await hooks.send(webhook_message(f"{base}/hooks/unregistered")),
                "bad request": await hooks.send(webhook_message(f"{base}/hooks/invalid")),
                "5xx": await hooks.send(retried),
                "5xx again": await hooks.send(retried),
                "backpressure": await hooks.send(webhook_message(f"{base}/hooks/fail429-1")),
            }

    results = run(scenario())
    assert (results["gone"].outcome, results["gone"].status_code) == (SendOutcome.INVALID_CONTACT, 410)
    assert (results["bad request"].outcome, results["bad request"].status_code) == (SendOutcome.PERMANENT, 400)
    assert (results["5xx"].outcome, results["5xx"].status_code) == (SendOutcome.TRANSIENT, 503)
    assert results["5xx again"].outcome is SendOutcome.SENT
    backpressure = results["backpressure"]
    assert (backpressure.outcome, backpressure.retry_after) == (SendOutcome.RATE_LIMITED, 1.0)
    assert [r["idempotency_key"] for r in control.requests()] == [retried["id"]]


def test_wrong_secret_missing_secret_and_bad_urls(sandbox: SandboxProcess, control: SandboxClient) -> None:
    other = "whsec_" + base64.b64encode(b"not-the-receivers-secret-32bytes").decode()
    url = f"{sandbox.url('webhook')}/hooks/a"

    async def scenario():
        async with (
            WebhookAdapter(signing_secret=other) as wrong,
            WebhookAdapter(signing_secret="") as unsigned,
            WebhookAdapter(signing_secret=SECRET) as hooks,
        ):
            return (
                await wrong.send(webhook_message(url)),
                await unsigned.send(webhook_message(url)),
                await hooks.send(webhook_message("ftp://files.example.com/drop")),
                await hooks.send(webhook_message("http://127.0.0.1:9/closed-port")),
            )

    wrong, unsigned, ftp, closed = run(scenario())
    assert (wrong.outcome, wrong.status_code) == (SendOutcome.PERMANENT, 401)
    assert (unsigned.outcome, unsigned.error_code) == (SendOutcome.CONFIG_ERROR, "missing_secret")
    assert (ftp.outcome, ftp.error_code) == (SendOutcome.INVALID_CONTACT, "bad_url")
    assert (closed.outcome, closed.error_code) == (SendOutcome.TRANSIENT, "connect_error")
    assert control.stats()["errors"] == {"signature": 1}
    assert SECRET not in repr(WebhookAdapter(signing_secret=SECRET))


def test_timeout_is_transient(sandbox: SandboxProcess, control: SandboxClient) -> None:
    async def scenario():
        async with WebhookAdapter(signing_secret=SECRET, timeout=0.2) as hooks:
            return await hooks.send(webhook_message(f"{sandbox.url('webhook')}/hooks/slow-500"))

    result = run(scenario())
    assert (result.outcome, result.error_code) == (SendOutcome.TRANSIENT, "timeout")
    # The receiver still processes the abandoned request (why webhook-id dedup matters on retry);
    # wait for it so it does not land in the next test's counters.
    control.wait_for_accepted(1, timeout=5.0)


@pytest.mark.slow
def test_500_concurrent_webhooks_at_100ms_latency(sandbox: SandboxProcess, control: SandboxClient) -> None:
    control.configure(latency=100)
    base = sandbox.url("webhook")
    messages = [webhook_message(f"{base}/hooks/tenant-{i % 5}") for i in range(500)]

    async def scenario():
        async with WebhookAdapter(signing_secret=SECRET, max_per_host=200) as hooks:
            started = time.perf_counter()
            results = await hooks.send_many(messages)
            return results, time.perf_counter() - started

    results, elapsed = run(scenario())
    assert all(r.outcome is SendOutcome.SENT for r in results)
    assert elapsed < 5.0, f"500 webhooks took {elapsed:.2f}s: sends are not concurrent"
    recorded = [r["idempotency_key"] for r in control.iter_requests()]
    assert sorted(k for k in recorded if k in {m["id"] for m in messages}) == sorted(m["id"] for m in messages)
    print(f"\n500 signed webhooks at 100 ms latency: {elapsed:.2f}s ({500 / elapsed:.0f}/s)")


def test_send_deadline_and_per_host_back_pressure(sandbox: SandboxProcess, control: SandboxClient) -> None:
    base = sandbox.url("webhook")

    async def scenario():
        async with WebhookAdapter(signing_secret=SECRET, timeout=5.0, deadline=0.3) as bounded:
            late = await bounded.send(webhook_message(f"{base}/hooks/slow-2000"))
        async with WebhookAdapter(signing_secret=SECRET, max_per_host=1) as narrow:
            narrow.slot_timeout = 0.05
            busy = await asyncio.gather(*(narrow.send(webhook_message(f"{base}/hooks/slow-300")) for _ in range(2)))
        return late, busy

    late, busy = run(scenario())
    assert (late.outcome, late.error_code) == (SendOutcome.TRANSIENT, "deadline")
    outcomes = sorted((r.outcome, r.error_code) for r in busy)
    assert outcomes == [(SendOutcome.RATE_LIMITED, "endpoint_busy"), (SendOutcome.SENT, "")]
    control.wait_for_accepted(2, timeout=5.0)  # let the abandoned slow request land before the next test
