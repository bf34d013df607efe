"""`ensure_topics` creates the registry idempotently and reports partition and replica mismatches."""

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from django.conf import settings
from django.core.management import call_command

from notifications.bus.config import admin_config
from notifications.bus.kafka_admin import ensure_topics
from notifications.bus.topics import TopicSpec, registry


def test_registry_topics_exist(kafka_topics):
    existing = AdminClient(admin_config()).list_topics(timeout=10).topics
    for spec in registry():
        assert spec.full_name in existing and spec.full_name.startswith(kafka_topics)
        assert len(existing[spec.full_name].partitions) == 3
        for partition in existing[spec.full_name].partitions.values():
            assert len(partition.replicas) == settings.KAFKA_REPLICATION_FACTOR


def test_topics_carry_their_min_insync_replicas(kafka_topics):
    """acks=all means "on min.insync.replicas brokers": set on each topic, not left to the brokers."""
    name = registry()[0].full_name
    admin = AdminClient(admin_config())
    configs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)])
    config = next(iter(configs.values())).result(10)
    expected = 2 if settings.KAFKA_REPLICATION_FACTOR >= 3 else 1
    assert config["min.insync.replicas"].value == str(expected)


def test_second_run_creates_nothing():
    report = ensure_topics()
    assert report.created == [] and report.mismatched == []
    assert len(report.existing) == len(registry())


def test_partition_mismatch_is_reported(capsys):
    spec = registry()[0]
    report = ensure_topics(specs=[TopicSpec(spec.name, partitions=5)])
    assert report.mismatched and "has 3 partitions, registry says 5" in report.mismatched[0]


def test_replica_mismatch_is_reported(settings):
    settings.KAFKA_REPLICATION_FACTOR += 1
    report = ensure_topics(specs=registry()[:1])
    replicas = settings.KAFKA_REPLICATION_FACTOR - 1
    assert report.mismatched == [
        f"{registry()[0].full_name}: has {replicas} replicas, registry says {settings.KAFKA_REPLICATION_FACTOR}"
    ]


@pytest.mark.django_db
def test_command_output(capsys):
    call_command("ensure_topics")
    assert "0 created" in capsys.readouterr().out
