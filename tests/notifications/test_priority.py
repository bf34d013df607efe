"""The one classification: which class and lane a message gets, whatever path it took."""

import pytest

from notifications.bus.topics import delivery_topic, events_topic, lane_of_topic
from notifications.models import Category, Urgency
from notifications.priority import Lane, PriorityClass, classify, lane_for, message_priority


@pytest.mark.parametrize(
    ("category", "urgency", "campaign", "expected"),
    [
        (Category.SECURITY, Urgency.NORMAL, False, PriorityClass.URGENT),
        (Category.SECURITY, Urgency.BULK, False, PriorityClass.URGENT),  # security is never bulk
        (Category.TRANSACTIONAL, Urgency.URGENT, False, PriorityClass.URGENT),
        (Category.SOCIAL, Urgency.URGENT, False, PriorityClass.URGENT),
        (Category.TRANSACTIONAL, Urgency.NORMAL, False, PriorityClass.TRANSACTIONAL),
        (Category.PRODUCT, Urgency.NORMAL, False, PriorityClass.TRANSACTIONAL),
        (Category.PRODUCT, Urgency.BULK, False, PriorityClass.BULK),
        (Category.MARKETING, Urgency.URGENT, False, PriorityClass.BULK),  # marketing whatever its urgency
        (Category.MARKETING, Urgency.NORMAL, False, PriorityClass.BULK),
        (Category.TRANSACTIONAL, Urgency.URGENT, True, PriorityClass.BULK),  # a campaign whatever its type
        (Category.SECURITY, Urgency.URGENT, True, PriorityClass.BULK),
    ],
)
def test_classification(category, urgency, campaign, expected):
    assert classify(category=category, urgency=urgency, campaign=campaign) is expected


def test_lanes_and_their_topics(settings):
    settings.KAFKA_TOPIC_PREFIX = "t1."
    assert [lane_for(c) for c in PriorityClass] == [Lane.PRIORITY, Lane.PRIORITY, Lane.BULK]
    assert delivery_topic("email") == "t1.notif.email"
    assert delivery_topic("email", Lane.BULK) == "t1.notif.email.bulk"
    assert delivery_topic("sms", Lane.BULK, "5s") == "t1.notif.sms.bulk.retry.5s"
    assert events_topic(Lane.BULK) == "t1.notif.events.bulk"
    for lane in Lane:
        assert lane_of_topic(events_topic(lane)) is lane
        assert lane_of_topic(delivery_topic("push", lane, "10m")) is lane
    assert lane_of_topic("t1.notif.email.dlq") is Lane.PRIORITY


def test_without_lanes_every_class_shares_the_priority_lane(settings):
    settings.PRIORITY_LANES = False
    assert {lane_for(c) for c in PriorityClass} == {Lane.PRIORITY}


def test_a_message_keeps_the_class_it_was_built_with():
    assert message_priority({"priority": "bulk", "category": "security"}) is PriorityClass.BULK
    # A message from before the classes (no or an unknown priority) is classified from its fields.
    assert message_priority({"category": "security", "urgency": "normal"}) is PriorityClass.URGENT
    assert message_priority({"priority": "?", "category": "transactional", "urgency": "normal"}) is (
        PriorityClass.TRANSACTIONAL
    )
    campaign = {"category": "transactional", "urgency": "bulk", "meta": {"campaign_id": 3}}
    assert message_priority(campaign) is PriorityClass.BULK
