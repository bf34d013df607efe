"""Read-side queries of topics: lists, one keyset page of a topic's subscribers, "my topics"."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from preferences.recipient_ids import external_ids_of

from .models import Topic, TopicSubscription


def topic_by_key(key: str) -> Topic | None:
    return Topic.objects.filter(key=key).first()


def topics_page(*, after_key: str = "", limit: int = 100) -> list[Topic]:
    """Topics in key order after ``after_key`` (keyset)."""
    return list(Topic.objects.filter(key__gt=after_key).order_by("key")[:limit])


def topics_with_counts() -> QuerySet[Topic]:
    """Topics annotated with ``subscriber_count`` (an index-only count per topic)."""
    return Topic.objects.annotate(subscriber_count=Count("subscriptions"))


@dataclass(frozen=True)
class SubscriberPage:
    recipients: list[str]  # the producer's ids for them, in user-id order
    next_after: int | None  # the cursor of the next page, None on the last one


def subscribers_page(*, topic: Topic, after_user_id: int = 0, limit: int = 1000) -> SubscriberPage:
    """One page of the topic's subscribers: a range scan of the (topic_id, user_id) primary key."""
    user_ids = list(
        TopicSubscription.objects.filter(topic=topic, user_id__gt=after_user_id)
        .order_by("user_id")
        .values_list("user_id", flat=True)[: limit + 1]
    )
    more = len(user_ids) > limit
    user_ids = user_ids[:limit]
    names = external_ids_of(user_ids)
    return SubscriberPage([names[u] for u in user_ids], user_ids[-1] if more else None)


def my_topics(*, user_id: int) -> list[tuple[Topic, bool]]:
    """(topic, following) for the topics the user follows or may follow, in key order."""
    following = TopicSubscription.objects.filter(topic=OuterRef("pk"), user_id=user_id)
    rows = (
        Topic.objects.annotate(following=Exists(following))
        .filter(Q(following=True) | Q(user_can_follow=True))
        .order_by("key")
    )
    return [(topic, topic.following) for topic in rows]


def visible_topic(*, key: str, user_id: int) -> Topic | None:
    """The topic ``key`` if the user may see it (it is followable, or they follow it)."""
    following = TopicSubscription.objects.filter(topic=OuterRef("pk"), user_id=user_id)
    return (
        Topic.objects.annotate(following=Exists(following))
        .filter(Q(following=True) | Q(user_can_follow=True), key=key)
        .first()
    )
