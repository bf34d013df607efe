"""Webhook adapter with registered endpoints: their own secrets (and rotation), on/off, back-pressure scope."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from notifications.providers.results import SendOutcome
from notifications.providers.webhook import WebhookAdapter
from notifications.webhooks.directory import EndpointDirectory
from notifications.webhooks.services import webhook_endpoint_retire_previous_secrets, webhook_endpoint_save
from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess
from tests.providers.conftest import run, start_sandbox, webhook_message
from tests.webhook_signatures import verifies

pytestmark = pytest.mark.django_db

GLOBAL = "whsec_" + base64.b64encode(b"global-webhook-secret-0123456789").decode()
OLD = "whsec_" + base64.b64encode(b"tenant-old-webhook-secret-012345").decode()
NEW = "whsec_" + base64.b64encode(b"tenant-new-webhook-secret-012345").decode()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    yield from start_sandbox("webhook", webhook_secret=GLOBAL)


def send_all(messages: list[dict], directory: EndpointDirectory) -> list:
    async def scenario():
        async with WebhookAdapter(signing_secret=GLOBAL, endpoints=directory) as hooks:
            return [await hooks.send(m) for m in messages]

    return run(scenario())


def loaded() -> EndpointDirectory:
    directory = EndpointDirectory()
    directory.refresh()
    return directory


def test_a_registered_endpoint_signs_with_its_own_secret_and_the_others_with_the_global_one(
    sandbox: SandboxProcess, control: SandboxClient
) -> None:
    base = sandbox.url("webhook")
    webhook_endpoint_save(url=f"{base}/tenant-a", new_secret=OLD)
    webhook_endpoint_save(url=f"{base}/tenant-b", new_secret=NEW)
    control.configure(options={"endpoint_secrets": {"/tenant-a": OLD, "/tenant-b": NEW}})
    results = send_all(
        [webhook_message(f"{base}/tenant-a"), webhook_message(f"{base}/tenant-b"), webhook_message(f"{base}/other")],
        loaded(),
    )
    assert [r.outcome for r in results] == [SendOutcome.SENT] * 3, [r.message for r in results]
    a, b, other = control.requests(raw=True)
    assert verifies(a, OLD) and not verifies(a, NEW) and not verifies(a, GLOBAL)
    assert verifies(b, NEW) and not verifies(b, OLD)
    assert verifies(other, GLOBAL), "an endpoint without a secret of its own: WEBHOOK_SIGNING_SECRET"


def test_during_a_rotation_each_message_verifies_with_the_old_and_the_new_secret(
    sandbox: SandboxProcess, control: SandboxClient
) -> None:
    url = f"{sandbox.url('webhook')}/tenant-r"
    endpoint = webhook_endpoint_save(url=url, new_secret=OLD)
    webhook_endpoint_save(endpoint=endpoint, url=url, new_secret=NEW)  # keeps OLD: a rotation
    control.configure(options={"endpoint_secrets": {"/tenant-r": OLD}})  # the receiver not switched yet
    assert send_all([webhook_message(url)], loaded())[0].outcome is SendOutcome.SENT
    control.configure(options={"endpoint_secrets": {"/tenant-r": NEW}})  # the receiver switched
    assert send_all([webhook_message(url)], loaded())[0].outcome is SendOutcome.SENT
    first, second = control.requests(raw=True)
    assert all(verifies(r, OLD) and verifies(r, NEW) for r in (first, second))
    assert len(first["meta"]["webhook-signature"].split()) == 2

    assert webhook_endpoint_retire_previous_secrets(endpoint=endpoint) == 1
    control.configure(options={"endpoint_secrets": {"/tenant-r": OLD}})
    [retired] = send_all([webhook_message(url)], loaded())
    assert (retired.outcome, retired.status_code) == (SendOutcome.PERMANENT, 401), "the old secret no longer signs"


def test_results_carry_the_endpoint_as_their_scope(sandbox: SandboxProcess, control: SandboxClient) -> None:
    base = sandbox.url("webhook")
    endpoint = webhook_endpoint_save(url=f"{base}/hooks/fail429-1/registered", new_secret=OLD)
    control.configure(options={"endpoint_secrets": {"/hooks/fail429-1/registered": OLD}})
    registered, unregistered = send_all(
        [webhook_message(f"{base}/hooks/fail429-1/registered"), webhook_message(f"{base}/hooks/fail429-1/other")],
        loaded(),
    )
    assert (registered.outcome, registered.scope) == (SendOutcome.RATE_LIMITED, f"endpoint:{endpoint.pk}")
    port = sandbox.url("webhook").rsplit(":", 1)[1]
    assert (unregistered.outcome, unregistered.scope) == (SendOutcome.RATE_LIMITED, f"origin:http://127.0.0.1:{port}")


def test_a_switched_off_endpoint_is_not_sent_to(sandbox: SandboxProcess, control: SandboxClient) -> None:
    url = f"{sandbox.url('webhook')}/tenant-off"
    webhook_endpoint_save(url=url, new_secret=OLD, active=False)
    [result] = send_all([webhook_message(url)], loaded())
    assert (result.outcome, result.error_code) == (SendOutcome.PERMANENT, "endpoint_inactive")
    assert control.stats()["received"] == 0
