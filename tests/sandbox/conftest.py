"""Fixtures: one sandbox subprocess (all providers, free ports) shared by the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from provider_sandbox.client import SandboxClient
from provider_sandbox.config import PROVIDERS
from provider_sandbox.process import SandboxProcess

PORT_ARGS = [arg for name in PROVIDERS for arg in (f"--{name}-port", "0")] + ["--smtp-control-port", "0"]


@pytest.fixture(scope="session", autouse=True)
def kafka_topics() -> str:
    """Shadows the project-wide autouse Kafka fixture: sandbox tests need neither Kafka nor Django."""
    return "sandbox-tests-without-kafka."


@pytest.fixture(scope="session")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess([*PORT_ARGS, "--seed", "7"]) as proc:
        yield proc


@pytest.fixture(scope="session")
def controls(sandbox: SandboxProcess) -> Iterator[dict[str, SandboxClient]]:
    clients = {name: sandbox.client(name) for name in PROVIDERS}
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture(autouse=True)
def _fresh_state(request: pytest.FixtureRequest) -> None:
    """Every test that uses the shared sandbox starts from the startup configuration and empty records."""
    if "sandbox" in request.fixturenames:
        for client in request.getfixturevalue("controls").values():
            client.reset(config=True)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client
