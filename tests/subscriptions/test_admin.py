"""The admin: topics with their subscriber counts; a fanout event on the campaign pages."""

import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from campaigns.fanout import FanoutTarget, fanout_create
from campaigns.models import CampaignState
from notifications.models import NotificationTemplate
from subscriptions.models import Topic, TopicSubscription

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "x" * 12))
    return client


def test_topics_are_listed_with_their_subscriber_counts(admin_client, django_user_model):
    show = Topic.objects.create(key="show:1", name="The Show")
    Topic.objects.create(key="show:2", name="Empty")
    for i in range(3):
        TopicSubscription.objects.create(topic=show, user=django_user_model.objects.create_user(f"fan{i}"))
    page = admin_client.get(reverse("admin:subscriptions_topic_changelist"))
    assert page.status_code == 200
    rows = {topic.key: topic.subscriber_count for topic in page.context["cl"].result_list}
    assert rows == {"show:1": 3, "show:2": 0}


def test_a_fanout_shows_what_the_producer_sent_and_its_controls(admin_client, notification_type):
    NotificationTemplate.objects.create(notification_type=notification_type, channel="email", subject="s", body="b")
    show = Topic.objects.create(key="show:1", name="The Show")
    fanout = fanout_create(
        event_id=uuid.uuid4(),
        producer_event_id="ep-1",
        service="orders",
        type_key=notification_type.key,
        target=FanoutTarget(topic="show:1"),
        data={"episode": "S1E2"},
        now=timezone.now(),
    )
    assert fanout.state == CampaignState.SCHEDULED and fanout.topic == show
    page = admin_client.get(reverse("admin:campaigns_campaign_change", args=[fanout.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Fanout event" in html and "ep-1" in html and "S1E2" in html
    assert "campaign_buttons" in page.context and ("cancel", "Cancel campaign") in page.context["campaign_buttons"]
    assert not page.context["inline_admin_formsets"], "a fanout renders its type's templates, not campaign copy"
    listing = admin_client.get(reverse("admin:campaigns_campaign_changelist") + "?kind__exact=fanout")
    assert [c.pk for c in listing.context["cl"].result_list] == [fanout.pk]


def test_a_fanout_to_a_topic_deleted_meanwhile_is_failed_not_refused(notification_type):
    fanout = fanout_create(
        event_id=uuid.uuid4(),
        producer_event_id="ep-2",
        service="orders",
        type_key=notification_type.key,
        target=FanoutTarget(topic="gone"),
        data={},
        now=timezone.now(),
    )
    assert fanout.state == CampaignState.FAILED and "no longer exists" in fanout.failure_reason
