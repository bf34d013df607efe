"""Fixtures of the preferences tests: an isolated Redis key prefix per test, API clients for two users."""

from __future__ import annotations

import uuid

import pytest
import redis
from rest_framework.test import APIClient

from notifications.redis_client import get_redis
from preferences.cache import BREAKER

from .factories import UserFactory


@pytest.fixture(autouse=True)
def redis_prefix(settings):
    """Each test writes under its own key prefix; its keys are removed afterwards."""
    prefix = f"test:{uuid.uuid4().hex[:10]}:"
    settings.REDIS_KEY_PREFIX = prefix
    BREAKER.reset()
    yield prefix
    BREAKER.reset()
    client = get_redis()
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_client() -> redis.Redis:
    return get_redis()


@pytest.fixture
def user_a(db):
    return UserFactory(username="alice")


@pytest.fixture
def user_b(db):
    return UserFactory(username="bob")


class CommittingAPIClient(APIClient):
    """Runs the on-commit callbacks of each request when it ends, as the commit of a real request would
    (the test's transaction never commits, so they would otherwise wait until the end of the test)."""

    capture_on_commit = None

    def request(self, **kwargs):
        with self.capture_on_commit(execute=True):
            return super().request(**kwargs)


@pytest.fixture
def api_client(db, django_capture_on_commit_callbacks) -> APIClient:
    client = CommittingAPIClient()
    client.capture_on_commit = django_capture_on_commit_callbacks
    return client


@pytest.fixture
def client_a(user_a, django_capture_on_commit_callbacks) -> APIClient:
    client = CommittingAPIClient()
    client.capture_on_commit = django_capture_on_commit_callbacks
    client.force_authenticate(user_a)
    return client


@pytest.fixture
def client_b(user_b, django_capture_on_commit_callbacks) -> APIClient:
    client = CommittingAPIClient()
    client.capture_on_commit = django_capture_on_commit_callbacks
    client.force_authenticate(user_b)
    return client
