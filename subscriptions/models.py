"""Topics and their subscriptions.

* :class:`Topic` is something recipients follow (a show, a region, a product), named by the
  producer's ``key``. An event addressed to ``{"target": {"topic": key}}`` reaches its subscribers.
* :class:`TopicSubscription` is one (topic, user) pair. Its primary key *is* ``(topic_id, user_id)``,
  so paging the subscribers of a topic in user-id order is a range scan of the primary key index
  (keyset pagination: the cost of a page does not grow with its position).

"Topic" here is the product's word; Kafka topics live in :mod:`notifications.bus.topics`.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

TOPIC_KEY_PATTERN = r"^[a-z0-9][a-z0-9_.:-]{0,99}$"
TOPIC_KEY_HELP = "1 to 100 characters: lower-case letters, digits and '.', '_', ':', '-' (e.g. show:1234)."


class Topic(models.Model):
    """Something recipients follow; producers add and remove subscribers, users may follow it themselves."""

    key = models.CharField(
        max_length=100,
        unique=True,
        validators=[RegexValidator(TOPIC_KEY_PATTERN, TOPIC_KEY_HELP)],
        help_text=TOPIC_KEY_HELP,
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    user_can_follow = models.BooleanField(
        default=False, help_text="End users may follow and unfollow it themselves (/api/v1/me/topics)."
    )
    created_by_service = models.CharField(max_length=100, blank=True, help_text="The producer service that created it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class TopicSubscription(models.Model):
    """One user subscribed to one topic."""

    pk = models.CompositePrimaryKey("topic_id", "user_id")
    # No index per foreign key: the primary key leads with the topic, the index below with the user
    # (every index more is one more write per subscription).
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="subscriptions", db_index=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="topic_subscriptions", db_index=False
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # "My topics" and erasing a user look subscriptions up by user; with the topic in the index a
        # page that the planner reads in user order is filtered on the topic without visiting the table.
        indexes = [models.Index(fields=["user", "topic"], name="topicsubscription_user_topic")]

    def __str__(self) -> str:
        return f"{self.user_id} → {self.topic_id}"
