"""The configuration tests read source files and run providers against the sandboxes."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def kafka_topics() -> str:
    """Shadows the project-wide autouse Kafka fixture: reading source files needs no topics."""
    return "config-tests-without-kafka."
