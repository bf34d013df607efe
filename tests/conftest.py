"""Shared fixtures: an isolated Kafka topic prefix per test run, API clients, subprocess env."""

import os
import uuid

import pytest
from django.conf import settings


@pytest.fixture(scope="session")
def django_db_modify_db_settings():
    """A test database per run, so concurrent runs (developers, CI, benchmarks) never collide."""
    name = os.environ.get("TEST_DATABASE_NAME") or f"test_notifications_{os.getpid()}"
    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = name


@pytest.fixture(scope="session", autouse=True)
def kafka_topics():
    """Every test run gets its own topic prefix, created up front and deleted afterwards."""
    from notifications.bus.admin import delete_topics_with_prefix, ensure_topics

    prefix = f"test{uuid.uuid4().hex[:8]}."
    settings.KAFKA_TOPIC_PREFIX = prefix
    settings.KAFKA_DEFAULT_PARTITIONS = 3
    ensure_topics()
    yield prefix
    delete_topics_with_prefix(prefix)


@pytest.fixture
def subprocess_env(db, kafka_topics):
    """Environment for a platform process started by a test: same test database, topics, Redis."""
    db_settings = settings.DATABASES["default"]
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": (
                f"postgres://{db_settings['USER']}:{db_settings['PASSWORD']}@{db_settings['HOST']}:"
                f"{db_settings['PORT']}/{db_settings['NAME']}"
            ),
            "KAFKA_TOPIC_PREFIX": kafka_topics,
            "KAFKA_DEFAULT_PARTITIONS": str(settings.KAFKA_DEFAULT_PARTITIONS),
            "REDIS_URL": settings.REDIS_URL,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "METRICS_PORT": "0",
            "OUTBOX_BUCKETS": str(settings.OUTBOX_BUCKETS),
        }
    )
    return env


@pytest.fixture
def notification_type(db):
    from notifications.models import NotificationType

    return NotificationType.objects.create(
        key="order.shipped", name="Order shipped", default_channels=["email", "push"]
    )


@pytest.fixture
def api_key(db):
    from notifications.models import ApiKey

    key, raw = ApiKey.generate(service="orders")
    return key, raw


@pytest.fixture
def service_client(api_key):
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {api_key[1]}")
    return client


@pytest.fixture
def fresh_topic(kafka_topics):
    """A new, empty topic for one test (deleted with the run's prefix at the end of the session)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from notifications.bus.config import admin_config

    name = f"{kafka_topics}scratch.{uuid.uuid4().hex[:10]}"
    admin = AdminClient(admin_config())  # keep the client alive until the future resolves
    futures = admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    futures[name].result(30)
    return name
