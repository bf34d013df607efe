"""In-app inbox: idempotent `inbox_write_many`, cursor pagination, unread count, mark read."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from preferences.models import InboxMessage
from preferences.services import inbox_write_many

from .factories import InboxMessageFactory, UserFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/me/notifications"


def message(user_id, n, **extra):
    return {
        "user_id": user_id,
        "notification_id": f"evt-{n}:{user_id}:inapp",
        "type_key": "comment.created",
        "category": "social",
        "title": f"Comment {n}",
        "body": "Someone replied.",
        "data": {"n": n},
        **extra,
    }


def test_inbox_write_many_is_idempotent(user_a, user_b):
    batch = [message(user_a.pk, 1), message(user_a.pk, 2), message(user_b.pk, 1)]
    assert inbox_write_many(batch) == 3
    assert inbox_write_many(batch) == 0  # a redelivered batch stores nothing
    assert inbox_write_many([message(user_a.pk, 2), message(user_a.pk, 3), message(user_a.pk, 3)]) == 1
    assert inbox_write_many([message(999_999, 1)]) == 0  # deleted user: dropped, not an error
    assert inbox_write_many([]) == 0
    stored = InboxMessage.objects.get(notification_id=f"evt-1:{user_a.pk}:inapp")
    assert (stored.user_id, stored.category, stored.title, stored.data) == (user_a.pk, "social", "Comment 1", {"n": 1})
    assert stored.read_at is None and stored.created_at is not None


def test_cursor_pagination_newest_first_with_unread_count(client_a, user_a, user_b):
    start = timezone.now() - dt.timedelta(hours=1)
    messages = [InboxMessageFactory(user=user_a, created_at=start + dt.timedelta(minutes=i)) for i in range(5)]
    InboxMessageFactory(user=user_b)  # someone else's
    messages[0].read_at = timezone.now()
    messages[0].save()

    first = client_a.get(URL, {"page_size": 2}).json()
    assert first["unread_count"] == 4
    assert [m["id"] for m in first["results"]] == [messages[4].pk, messages[3].pk]
    second = client_a.get(first["next"]).json()
    assert [m["id"] for m in second["results"]] == [messages[2].pk, messages[1].pk]
    third = client_a.get(second["next"]).json()
    assert [m["id"] for m in third["results"]] == [messages[0].pk] and third["next"] is None
    assert third["results"][0]["read"] is True and third["results"][0]["type"] == "order.shipped"

    unread = client_a.get(URL, {"unread": "true", "page_size": 10}).json()
    assert [m["id"] for m in unread["results"]] == [m.pk for m in reversed(messages[1:])]


def test_mark_one_and_all_read(client_a, user_a):
    messages = [InboxMessageFactory(user=user_a) for _ in range(3)]
    response = client_a.post(f"{URL}/{messages[0].pk}/read")
    assert response.status_code == 200 and response.json()["read"] is True
    first_read_at = response.json()["read_at"]
    assert client_a.post(f"{URL}/{messages[0].pk}/read").json()["read_at"] == first_read_at  # idempotent
    assert client_a.get(URL).json()["unread_count"] == 2

    response = client_a.post(f"{URL}/read-all")
    assert response.status_code == 200 and response.json() == {"marked": 2, "unread_count": 0}
    assert client_a.get(URL, {"unread": "true"}).json()["results"] == []


def test_read_all_until_spares_newer_messages(client_a, user_a):
    old = InboxMessageFactory(user=user_a, created_at=timezone.now() - dt.timedelta(minutes=5))
    new = InboxMessageFactory(user=user_a)
    response = client_a.post(
        f"{URL}/read-all", {"until": (old.created_at + dt.timedelta(seconds=1)).isoformat()}, format="json"
    )
    assert response.json() == {"marked": 1, "unread_count": 1}
    new.refresh_from_db()
    assert new.read_at is None


def test_users_cannot_see_or_mark_each_others_messages(client_a, client_b, user_b):
    theirs = InboxMessageFactory(user=user_b)
    assert client_a.get(URL).json() == {"next": None, "previous": None, "unread_count": 0, "results": []}
    assert client_a.post(f"{URL}/{theirs.pk}/read").status_code == 404
    assert client_a.post(f"{URL}/read-all").json()["marked"] == 0
    theirs.refresh_from_db()
    assert theirs.read_at is None
    assert client_b.get(URL).json()["unread_count"] == 1


def test_anonymous_cannot_read_an_inbox(api_client):
    UserFactory()
    assert api_client.get(URL).status_code in (401, 403)
