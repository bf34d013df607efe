"""Fixtures for delivery tests: a real Redis (REDIS_URL) and a unique, cleaned-up key prefix per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from notifications.delivery.redis_client import make_redis_client
from notifications.redis_connect import is_cluster

DEFAULT_REDIS_URL = "redis://127.0.0.1:56379/15"


@pytest.fixture(scope="session", autouse=True)
def kafka_topics() -> str:
    """Override tests/conftest.py's autouse Kafka fixture: delivery tests need neither Kafka nor Django."""
    return "unused."


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = make_redis_client(redis_url, socket_timeout=2.0, socket_connect_timeout=1.0)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis at {redis_url} ({exc!r}); start it with platform/services up or set REDIS_URL")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A unique key prefix; every key under it is deleted after the test."""
    value = f"test:delivery:{uuid.uuid4().hex}:"
    yield value
    keys = list(redis_client.scan_iter(match=f"{value}*", count=1000))
    if keys:
        redis_client.delete(*keys)


def thread_client(client: redis.Redis) -> redis.Redis:
    """A client for another thread: one server's client on the same pool; a cluster client as is
    (it is thread-safe, and has a pool per node)."""
    if is_cluster(client):
        return client
    return redis.Redis(connection_pool=client.connection_pool)


def redis_time(client: redis.Redis) -> float:
    """The Redis server clock (the token bucket's only clock) in epoch seconds."""
    seconds, micros = client.time()
    return seconds + micros / 1_000_000
