"""The campaign state machine, launch permission, the outbox launch event and the admin pages."""

import datetime as dt

import orjson
import pytest
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.urls import reverse

from campaigns import services
from campaigns.models import Campaign, CampaignState
from notifications.bus.topics import channel_topic, topic_name
from notifications.models import OutboxEvent
from preferences.models import RecipientProfile
from tests.campaigns.conftest import copy_users, make_campaign

pytestmark = pytest.mark.django_db


def outbox(topic):
    """Outbox rows of `topic` with their payload decoded (the column is JSON text)."""
    rows = list(OutboxEvent.objects.filter(topic=topic).order_by("id"))
    for row in rows:
        if isinstance(row.payload, str):
            row.payload = orjson.loads(row.payload)
    return rows


def test_marketing_groups_are_created_by_migration():
    marketing = set(Group.objects.get(name="Marketing").permissions.values_list("codename", flat=True))
    editors = set(Group.objects.get(name="Marketing editors").permissions.values_list("codename", flat=True))
    assert {"add_campaign", "change_campaign", "view_campaign", "launch_campaign", "add_campaigncopy"} <= marketing
    assert "launch_campaign" not in editors and "change_campaign" in editors


def test_launch_writes_state_and_outbox_event_together(promo_type, marketer):
    campaign = make_campaign(promo_type)
    launched = services.campaign_launch(campaign_id=campaign.pk, user=marketer)
    assert launched.state == CampaignState.SCHEDULED and launched.launch_id and launched.launched_by == marketer
    [event] = outbox(topic_name("campaigns"))
    assert event.key == str(campaign.pk)
    assert event.payload["type"] == "campaign.launched"
    assert event.payload["launch_id"] == str(launched.launch_id)


def test_a_rolled_back_launch_publishes_nothing(promo_type, marketer):
    campaign = make_campaign(promo_type)
    with pytest.raises(RuntimeError), transaction.atomic():
        services.campaign_launch(campaign_id=campaign.pk, user=marketer)
        raise RuntimeError("the caller's transaction fails")
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.DRAFT and not outbox(topic_name("campaigns"))


def test_a_marketer_without_the_launch_permission_cannot_launch(promo_type, editor, client):
    campaign = make_campaign(promo_type)
    with pytest.raises(PermissionDenied):
        services.campaign_launch(campaign_id=campaign.pk, user=editor)
    client.force_login(editor)
    page = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert page.status_code == 200 and b'value="Launch"' not in page.content
    response = client.post(reverse("admin:campaigns_campaign_state", args=[campaign.pk, "launch"]), follow=True)
    assert b"You do not have permission to launch campaigns" in response.content
    response = client.post(
        reverse("admin:campaigns_campaign_changelist"),
        {"action": "launch", "_selected_action": [campaign.pk]},
        follow=True,
    )
    assert b"You do not have permission to launch campaigns" in response.content
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.DRAFT and not outbox(topic_name("campaigns"))


def test_the_state_machine(promo_type, marketer):
    campaign = make_campaign(promo_type)
    with pytest.raises(services.CampaignError, match="Cannot pause a campaign that is draft"):
        services.campaign_pause(campaign_id=campaign.pk, user=marketer)
    services.campaign_launch(campaign_id=campaign.pk, user=marketer)
    with pytest.raises(services.CampaignError, match="Only a draft can be launched"):
        services.campaign_launch(campaign_id=campaign.pk, user=marketer)
    assert services.campaign_transition(campaign_id=campaign.pk, to=CampaignState.RUNNING)
    assert services.campaign_pause(campaign_id=campaign.pk, user=marketer).state == CampaignState.PAUSED
    assert services.campaign_resume(campaign_id=campaign.pk, user=marketer).state == CampaignState.RUNNING
    assert services.campaign_cancel(campaign_id=campaign.pk, user=marketer).state == CampaignState.CANCELLED
    with pytest.raises(services.CampaignError, match="Cannot resume"):
        services.campaign_resume(campaign_id=campaign.pk, user=marketer)
    assert not services.campaign_complete(campaign_id=campaign.pk), "cancelled stays cancelled"
    types = [e.payload["type"] for e in outbox(topic_name("campaigns"))]
    assert types == ["campaign.launched", "campaign.paused", "campaign.resumed", "campaign.cancelled"]


def test_launch_refuses_what_cannot_run(promo_type, marketer):
    bad = make_campaign(promo_type)
    Campaign.objects.filter(pk=bad.pk).update(audience={"all": [{"field": "user.password", "op": "eq", "value": 1}]})
    with pytest.raises(services.CampaignError, match=r"audience: all\[0\].field: unknown field 'user.password'"):
        services.campaign_launch(campaign_id=bad.pk, user=marketer)
    no_copy = make_campaign(promo_type, channels=["email"])
    Campaign.objects.filter(pk=no_copy.pk).update(channels=["email", "push"])
    with pytest.raises(services.CampaignError, match="Write the default copy"):
        services.campaign_launch(campaign_id=no_copy.pk, user=marketer)
    past = make_campaign(promo_type, schedule_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(services.CampaignError, match="in the past"):
        services.campaign_launch(campaign_id=past.pk, user=marketer)


def test_admin_refuses_an_invalid_predicate_with_the_path(promo_type, marketer, client):
    client.force_login(marketer)
    data = {
        "name": "Bad",
        "notification_type": promo_type.pk,
        "channels": ["email"],
        "audience": '{"all": [{"field": "profile.locale", "op": "like", "value": "de"}]}',
        "schedule_timezone": "UTC",
        "throttle": "",
        "copies-TOTAL_FORMS": "0",
        "copies-INITIAL_FORMS": "0",
        "copies-MIN_NUM_FORMS": "0",
        "copies-MAX_NUM_FORMS": "1000",
    }
    response = client.post(reverse("admin:campaigns_campaign_add"), data)
    assert response.status_code == 200
    assert b"all[0].op: &#x27;like&#x27; is not an operator of profile.locale" in response.content
    assert not Campaign.objects.exists()


def test_admin_schedule_in_a_time_zone_and_copy_preview(promo_type, marketer, client):
    client.force_login(marketer)
    data = {
        "name": "Berlin morning",
        "notification_type": promo_type.pk,
        "channels": ["email"],
        "audience": '{"all": [{"field": "attributes.country", "op": "eq", "value": "DE"}]}',
        "schedule_local": "2030-07-01T09:00",
        "schedule_timezone": "Europe/Berlin",
        "throttle": "50",
        "copies-TOTAL_FORMS": "1",
        "copies-INITIAL_FORMS": "0",
        "copies-MIN_NUM_FORMS": "0",
        "copies-MAX_NUM_FORMS": "1000",
        "copies-0-channel": "email",
        "copies-0-locale": "",
        "copies-0-subject": "Hi {{ user.first_name }}",
        "copies-0-body": "Sale! {{ unsubscribe_url }}",
    }
    response = client.post(reverse("admin:campaigns_campaign_add"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    campaign = Campaign.objects.get()
    assert campaign.schedule_at == dt.datetime(2030, 7, 1, 7, 0, tzinfo=dt.UTC)  # CEST = UTC+2
    assert campaign.throttle == 50 and campaign.created_by == marketer
    page = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert b"Hi Sam" in page.content, "the copy preview renders with a sample recipient"
    assert b'value="Launch"' in page.content and b"Audience field reference" in page.content
    client.post(reverse("admin:campaigns_campaign_state", args=[campaign.pk, "launch"]))
    campaign.refresh_from_db()
    assert campaign.state == CampaignState.SCHEDULED
    page = client.get(reverse("admin:campaigns_campaign_change", args=[campaign.pk]))
    assert b"2030-07-01 09:00 Europe/Berlin" in page.content and b'value="Cancel campaign"' in page.content


def test_admin_estimate_progress_json_and_send_test(promo_type, marketer, client, settings):
    copy_users(5, attributes={"country": "DE"}, device="fcm")
    copy_users(3, attributes={"country": "FR"})
    campaign = make_campaign(
        promo_type,
        channels=["email", "push"],
        audience={"all": [{"field": "attributes.country", "op": "eq", "value": "DE"}]},
    )
    client.force_login(marketer)
    response = client.post(reverse("admin:campaigns_campaign_estimate", args=[campaign.pk]), follow=True)
    assert b"5 users match; reachable now \xe2\x80\x94 email: 5, push: 5" in response.content

    response = client.post(reverse("admin:campaigns_campaign_send_test", args=[campaign.pk]), follow=True)
    assert b"test sent to you on email" in response.content
    [test] = outbox(channel_topic("email"))
    assert test.payload["to"] == {"email": "marketer@example.com"} and test.payload["meta"]["test"] is True

    RecipientProfile.objects.create(user=User.objects.create(username="r-9", email="r9@example.com"), external_id="r-9")
    send = reverse("admin:campaigns_campaign_send_test", args=[campaign.pk])
    assert b"test sent to recipient r-9 on email" in client.post(send, {"recipient": "r-9"}, follow=True).content
    assert {"email": "r9@example.com"} in [row.payload["to"] for row in outbox(channel_topic("email"))]
    assert b"No recipient has the id" in client.post(send, {"recipient": "nobody"}, follow=True).content

    services.campaign_launch(campaign_id=campaign.pk, user=marketer)
    progress = client.get(reverse("admin:campaigns_campaign_progress", args=[campaign.pk])).json()
    assert progress["state"] == "scheduled" and {
        "sent",
        "suppressed",
        "failed",
        "deduplicated",
        "percent",
        "send_rate",
        "eta_seconds",
        "batches_emitted",
    } <= set(progress)
