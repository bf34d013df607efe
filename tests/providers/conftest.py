"""Fixtures for the provider adapter tests: channel messages, throwaway keys, a sandbox per module.

These tests need neither Kafka nor (except the in-app test) the database.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from notifications.dispatch.messages import ChannelMessage, channel_message
from provider_sandbox.client import SandboxClient
from provider_sandbox.process import SandboxProcess

T = TypeVar("T")
_ids = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def kafka_topics() -> str:
    """Shadows the project-wide autouse Kafka fixture: provider adapters do not touch Kafka."""
    return "provider-tests-without-kafka."


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one async scenario (pytest-asyncio is not installed); adapters live inside it."""
    return asyncio.run(coro)


def make_message(
    channel: str, to: dict[str, Any], content: dict[str, Any], *, urgency: str = "normal", **extra: Any
) -> ChannelMessage:
    n = next(_ids)
    message: dict[str, Any] = channel_message(  # type: ignore[assignment]
        event_id=f"00000000-0000-4000-8000-{n:012d}",
        user_id=n,
        channel=channel,
        type="order.shipped",
        category="transactional",
        urgency=urgency,
        priority="transactional",
        created_at="2025-01-01T12:00:00+00:00",
        locale="en",
        to=to,
        content=content,
    )
    message.update(extra)
    return message  # type: ignore[return-value]


def email_message(address: str, **content: Any) -> ChannelMessage:
    return make_message(
        "email", {"email": address}, {"subject": "Your order shipped", "body": "On its way.", **content}
    )


def sms_message(phone: str, body: str = "Your order shipped") -> ChannelMessage:
    return make_message("sms", {"phone": phone}, {"body": body})


def push_message(*devices: tuple[str, str], urgency: str = "normal", **data: Any) -> ChannelMessage:
    return make_message(
        "push",
        {"devices": [list(d) for d in devices]},
        {"title": "Shipped", "body": "Your order is on its way", "data": {"order": 42, **data}},
        urgency=urgency,
    )


def webhook_message(url: str, payload: Any = None) -> ChannelMessage:
    return make_message("webhook", {"url": url}, {"payload": payload if payload is not None else {"order": 42}})


def sandbox_args(*providers: str, **flags: Any) -> list[str]:
    """CLI args for a sandbox with only ``providers`` on free ports (``flags``: ``twilio_latency=100`` ...)."""
    args = ["--only", ",".join(providers), "--seed", "7"]
    for name in providers:
        args += [f"--{name}-port", "0"]
    if "smtp" in providers:
        args += ["--smtp-control-port", "0"]
    for key, value in flags.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def start_sandbox(*providers: str, **flags: Any) -> Iterator[SandboxProcess]:
    with SandboxProcess(sandbox_args(*providers, **flags)) as proc:
        yield proc


@pytest.fixture
def control(sandbox: SandboxProcess) -> Iterator[SandboxClient]:
    """The control client of the module's sandbox (one provider; see ``start_sandbox``), reset to its
    start-up configuration."""
    [provider] = {name.removesuffix("_control") for name in sandbox.urls}
    with sandbox.client(provider) as client:
        client.reset(config=True)
        yield client


# ---------------------------------------------------------------------------------------------- keys
@pytest.fixture(scope="session")
def rsa_pem(rsa_key: rsa.RSAPrivateKey) -> tuple[str, str]:
    """``(private PEM, public PEM)`` of a throwaway service-account key."""
    private = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        rsa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture(scope="session")
def ec_pem() -> tuple[str, str]:
    """``(private .p8 PEM, public PEM)`` of a throwaway APNs signing key."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def service_account_json(private_pem: str, token_uri: str, project: str = "demo-project") -> str:
    return json.dumps(
        {
            "type": "service_account",
            "project_id": project,
            "private_key_id": "key-1",
            "private_key": private_pem,
            "client_email": f"fcm-sender@{project}.iam.gserviceaccount.com",
            "token_uri": token_uri,
        }
    )
