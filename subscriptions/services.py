"""Write-side services of topics: create one, add and remove subscribers in bulk, follow and unfollow.

Subscribers are named by the producer's external recipient ids and resolved in one statement
(:func:`preferences.recipient_ids.resolve_recipients`); adding and removing are one set-based
statement each (``INSERT … SELECT unnest(…) ON CONFLICT DO NOTHING``), so 10,000 ids cost a few
index probes each and no per-row round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from preferences.recipient_ids import resolve_recipients

from .models import Topic, TopicSubscription

#: Recipient ids one add/remove request may carry (a 10k-id request is ~0.3 MB of JSON).
MAX_IDS_PER_REQUEST = 10_000


class TopicExists(Exception):
    """A topic with that key exists already."""


class TopicNotFollowable(Exception):
    """An end user asked to follow or unfollow a topic that only its producer manages."""


@dataclass
class SubscriberChange:
    """The outcome of an add or remove: how many rows changed, and the ids that name nobody."""

    changed: int
    unchanged: int
    unknown: list[str] = field(default_factory=list)


def topic_create(
    *, key: str, name: str, description: str = "", user_can_follow: bool = False, service: str = ""
) -> Topic:
    """A new topic; raises :class:`TopicExists` when the key is taken."""
    try:
        with transaction.atomic():
            return Topic.objects.create(
                key=key, name=name, description=description, user_can_follow=user_can_follow, created_by_service=service
            )
    except IntegrityError as exc:
        raise TopicExists(f"A topic with the key {key!r} exists already.") from exc


def subscribers_add(*, topic: Topic, recipients: Sequence[str]) -> SubscriberChange:
    """Subscribe the recipients the ids name (ids of nobody are reported, not stored)."""
    resolved = resolve_recipients(recipients)
    user_ids = sorted(set(resolved.values()))
    table = TopicSubscription._meta.db_table
    with connection.cursor() as cursor:
        # Sorted ids insert in index order; ON CONFLICT makes a repeat (or a concurrent add) a no-op.
        cursor.execute(
            f"INSERT INTO {table} (topic_id, user_id, created_at) "  # noqa: S608 - table from model metadata
            "SELECT %s, u, %s FROM unnest(%s::bigint[]) AS u ON CONFLICT DO NOTHING",
            [topic.pk, timezone.now(), user_ids],
        )
        added = cursor.rowcount
    return SubscriberChange(added, len(user_ids) - added, _unknown(recipients, resolved))


def subscribers_remove(*, topic: Topic, recipients: Sequence[str]) -> SubscriberChange:
    """Unsubscribe the recipients the ids name; an id that was not subscribed counts as unchanged."""
    resolved = resolve_recipients(recipients)
    user_ids = sorted(set(resolved.values()))
    table = TopicSubscription._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE topic_id = %s AND user_id = ANY(%s::bigint[])",  # noqa: S608
            [topic.pk, user_ids],
        )
        removed = cursor.rowcount
    return SubscriberChange(removed, len(user_ids) - removed, _unknown(recipients, resolved))


def _unknown(recipients: Sequence[str], resolved: dict[str, int]) -> list[str]:
    return [r for r in dict.fromkeys(recipients) if r not in resolved]


def topic_follow(*, topic: Topic, user_id: int, follow: bool) -> bool:
    """An end user follows (``follow``) or unfollows a topic that allows it; returns whether that
    changed anything. Raises :class:`TopicNotFollowable`."""
    if not topic.user_can_follow:
        raise TopicNotFollowable(topic.key)
    if follow:
        _, created = TopicSubscription.objects.get_or_create(topic=topic, user_id=user_id)
        return created
    return TopicSubscription.objects.filter(topic=topic, user_id=user_id).delete()[0] > 0
