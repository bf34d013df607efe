"""`ensure_topics` creates the registry idempotently and reports partition mismatches."""

import pytest
from confluent_kafka.admin import AdminClient
from django.core.management import call_command

from notifications.bus.config import admin_config
from notifications.bus.kafka_admin import ensure_topics
from notifications.bus.topics import TopicSpec, registry


def test_registry_topics_exist(kafka_topics):
    existing = AdminClient(admin_config()).list_topics(timeout=10).topics
    for spec in registry():
        assert spec.full_name in existing and spec.full_name.startswith(kafka_topics)
        assert len(existing[spec.full_name].partitions) == 3


def test_second_run_creates_nothing():
    report = ensure_topics()
    assert report.created == [] and report.mismatched == []
    assert len(report.existing) == len(registry())


def test_partition_mismatch_is_reported(capsys):
    spec = registry()[0]
    report = ensure_topics(specs=[TopicSpec(spec.name, partitions=5)])
    assert report.mismatched and "has 3 partitions, registry says 5" in report.mismatched[0]


@pytest.mark.django_db
def test_command_output(capsys):
    call_command("ensure_topics")
    assert "0 created" in capsys.readouterr().out
