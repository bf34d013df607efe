"""The preference centre changes what the dispatcher does for the next event (real Kafka, PostgreSQL, Redis)."""

from __future__ import annotations

import pytest

from notifications.channels import ALL_CHANNELS
from preferences.centre import field_name
from preferences.unsubscribe import unsubscribe_url
from tests.dispatch_helpers import dispatch, envelope, make_user, statuses

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("types")]


@pytest.fixture
def second_topic(kafka_topics):
    """Another empty topic: `dispatch` consumes a topic from its start."""
    import uuid

    from confluent_kafka.admin import AdminClient, NewTopic
    from django.conf import settings

    from notifications.bus.config import admin_config

    name = f"{kafka_topics}scratch.{uuid.uuid4().hex[:10]}"
    admin = AdminClient(admin_config())
    topic = NewTopic(name, num_partitions=3, replication_factor=settings.KAFKA_REPLICATION_FACTOR)
    admin.create_topics([topic])[name].result(30)
    return name


def test_unticking_marketing_email_on_the_page_suppresses_the_next_digest_email(
    client, django_user_model, fresh_topic, second_topic
):
    user = make_user(django_user_model)
    before = envelope("marketing.digest", user.id)
    dispatch(fresh_topic, [before])
    assert statuses(before["id"])["email"] == ("queued", "")

    ticked = {
        field_name(c, ch): "on" for c in ("transactional", "marketing", "product", "social") for ch in ALL_CHANNELS
    }
    del ticked[field_name("marketing", "email")]
    link = unsubscribe_url(user.id, "marketing").removeprefix("http://127.0.0.1:8000")
    assert client.post(link, {"action": "save", **ticked}).status_code == 200

    after = envelope("marketing.digest", user.id)
    dispatch(second_topic, [after])
    assert statuses(after["id"])["email"] == ("suppressed", "opted_out")
    assert statuses(after["id"])["push"] == ("queued", "")
