"""The topics API (producer and end user) and fanout events at the ingest, on the real database."""

import itertools

import orjson
import pytest
from rest_framework.test import APIClient

from campaigns.models import Campaign, CampaignKind, CampaignState
from notifications.models import NotificationTemplate, OutboxEvent
from preferences.identify import RecipientData, recipients_upsert
from subscriptions.models import Topic, TopicSubscription

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def recipients(db):
    recipients_upsert([RecipientData(f"r-{i}", fields={"email": f"r{i}@example.com"}) for i in range(5)])
    return [f"r-{i}" for i in range(5)]


@pytest.fixture
def show(service_client):
    response = service_client.post(
        "/api/v1/topics", {"key": "show:1", "name": "The Show", "user_can_follow": True}, format="json"
    )
    assert response.status_code == 201, response.content
    return Topic.objects.get(key="show:1")


def test_create_list_and_refuse_a_taken_or_bad_key(service_client, show):
    again = service_client.post("/api/v1/topics", {"key": "show:1", "name": "Again"}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "topic_exists"
    bad = service_client.post("/api/v1/topics", {"key": "Show One", "name": "x", "colour": 1}, format="json")
    assert bad.status_code == 400 and set(bad.json()) == {"colour"}
    bad = service_client.post("/api/v1/topics", {"key": "Show One", "name": "x"}, format="json")
    assert bad.status_code == 400 and set(bad.json()) == {"key"}
    service_client.post("/api/v1/topics", {"key": "show:2", "name": "Two"}, format="json")
    first = service_client.get("/api/v1/topics?limit=1").json()
    assert [t["key"] for t in first["results"]] == ["show:1"] and first["next_cursor"] == "show:1"
    second = service_client.get(f"/api/v1/topics?limit=1&cursor={first['next_cursor']}").json()
    assert [t["key"] for t in second["results"]] == ["show:2"] and second["next_cursor"] is None
    assert Topic.objects.get(key="show:1").created_by_service == "orders"


def test_add_page_and_remove_subscribers(service_client, show, recipients):
    url = "/api/v1/topics/show:1/subscribers"
    added = service_client.post(url, {"recipients": [*recipients, "r-0", "nobody"]}, format="json").json()
    assert added == {"changed": 5, "unchanged": 0, "unknown": ["nobody"]}
    again = service_client.post(url, {"recipients": recipients[:2]}, format="json").json()
    assert again == {"changed": 0, "unchanged": 2, "unknown": []}
    pages, cursor = [], ""
    while True:
        page = service_client.get(f"{url}?limit=2&cursor={cursor}").json()
        pages.append(page["recipients"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1] and sorted(itertools.chain(*pages)) == recipients
    removed = service_client.post(f"{url}/remove", {"recipients": ["r-1", "r-1", "nobody"]}, format="json").json()
    assert removed == {"changed": 1, "unchanged": 0, "unknown": ["nobody"]}
    assert TopicSubscription.objects.filter(topic=show).count() == 4


def test_subscriber_requests_are_checked_field_by_field(service_client, show, settings):
    url = "/api/v1/topics/show:1/subscribers"
    assert service_client.post(url, {"recipients": []}, format="json").status_code == 400
    bad = service_client.post(url, {"recipients": ["ok", "has space", 7]}, format="json")
    assert bad.status_code == 400 and set(bad.json()["recipients"]) == {"1", "2"}
    too_many = service_client.post(url, {"recipients": [f"x{i}" for i in range(10_001)]}, format="json")
    assert too_many.status_code == 400 and "recipients" in too_many.json()
    assert service_client.get(f"{url}?cursor=abc").status_code == 400
    assert service_client.get(f"{url}?cursor=\u00b2").status_code == 400  # a digit to str.isdigit, not to int()
    assert service_client.get(f"{url}?cursor=").status_code == 200  # the first page
    assert service_client.get(f"{url}?limit=0").status_code == 400
    assert service_client.get(f"{url}?limit=\u0663").status_code == 400
    assert (
        service_client.post("/api/v1/topics/nope/subscribers", {"recipients": ["a"]}, format="json").status_code == 404
    )


def test_ten_thousand_ids_in_one_request(service_client, show, django_user_model):
    from tests.campaigns.conftest import copy_users

    ids = copy_users(10_000)
    response = service_client.post(
        "/api/v1/topics/show:1/subscribers", {"recipients": [str(i) for i in ids]}, format="json"
    )
    assert response.json() == {"changed": 10_000, "unchanged": 0, "unknown": []}
    assert TopicSubscription.objects.filter(topic=show).count() == 10_000


def test_end_user_lists_follows_and_unfollows(service_client, show, django_user_model):
    user = django_user_model.objects.create_user("fan", email="fan@example.com")
    Topic.objects.create(key="internal", name="Internal", user_can_follow=False)
    closed = Topic.objects.create(key="vip", name="VIP", user_can_follow=False)
    client = APIClient()
    client.force_authenticate(user)
    assert [(t["key"], t["following"]) for t in client.get("/api/v1/me/topics").json()] == [("show:1", False)]
    assert client.put("/api/v1/me/topics/show:1").json()["following"] is True
    assert TopicSubscription.objects.filter(topic=show, user=user).exists()
    assert client.put("/api/v1/me/topics/internal").status_code == 404  # not visible to end users
    TopicSubscription.objects.create(topic=closed, user=user)  # the producer subscribed them
    listed = {t["key"]: t["following"] for t in client.get("/api/v1/me/topics").json()}
    assert listed == {"show:1": True, "vip": True}
    refused = client.delete("/api/v1/me/topics/vip")
    assert refused.status_code == 403 and refused.json()["code"] == "not_followable"
    assert client.delete("/api/v1/me/topics/show:1").json()["following"] is False
    assert not TopicSubscription.objects.filter(topic=show, user=user).exists()


def test_erasing_a_user_removes_their_subscriptions(show, recipients):
    from preferences.recipient_ids import resolve_recipients
    from preferences.recipients import recipient_erase

    TopicSubscription.objects.create(topic=show, user_id=resolve_recipients(["r-0"])["r-0"])
    assert recipient_erase(external_id="r-0")
    assert not TopicSubscription.objects.filter(topic=show).exists()


# --- fanout events at the ingest --------------------------------------------------------------------
@pytest.fixture
def templated_type(notification_type):
    NotificationTemplate.objects.create(
        notification_type=notification_type, channel="email", subject="Shipped {{ order }}", body="b"
    )
    return notification_type


def test_a_topic_event_is_accepted_once_as_a_scheduled_fanout(service_client, show, templated_type, recipients):
    body = {
        "event_id": "ep-7",
        "type": "order.shipped",
        "target": {"topic": "show:1", "exclude": ["r-0", "nobody"]},
        "data": {"order": "7"},
    }
    first = service_client.post("/api/v1/events", body, format="json")
    assert first.status_code == 202 and first.json()["duplicate"] is False
    fanout = Campaign.objects.get(kind=CampaignKind.FANOUT)
    assert str(fanout.launch_id) == first.json()["id"] and fanout.state == CampaignState.SCHEDULED
    assert fanout.topic == show and fanout.event_data == {"order": "7"} and fanout.producer_event_id == "ep-7"
    assert fanout.channels == ["email", "webhook"] and len(fanout.exclude_user_ids) == 1
    launches = OutboxEvent.objects.filter(topic__endswith="campaigns")
    assert launches.count() == 1 and orjson.loads(launches.get().payload)["type"] == "campaign.launched"
    assert not OutboxEvent.objects.filter(topic__contains="events").exists()  # no per-recipient row
    again = service_client.post("/api/v1/events", body, format="json")
    assert again.status_code == 202 and again.json()["duplicate"] is True
    assert Campaign.objects.count() == 1 and launches.count() == 1


def test_fanout_targets_are_checked(service_client, show, templated_type):
    def post(**fields):
        return service_client.post("/api/v1/events", {"type": "order.shipped", **fields}, format="json")

    unknown = post(target={"topic": "nope"})
    assert unknown.status_code == 400 and "topic" in unknown.json()["target"]
    both = post(target={"topic": "show:1"}, recipients=["a"])
    assert both.status_code == 400 and "recipients" in both.json()
    assert post().status_code == 400
    neither = post(target={"exclude": ["a"]})
    assert neither.status_code == 400 and "target" in neither.json()
    bad_predicate = post(target={"audience": {"all": [{"field": "user.password", "op": "eq", "value": "x"}]}})
    assert bad_predicate.status_code == 400 and "audience" in bad_predicate.json()["target"]
    audience = post(target={"audience": {"all": [{"field": "attributes.country", "op": "eq", "value": "DE"}]}})
    assert audience.status_code == 202
    assert Campaign.objects.get().topic is None
