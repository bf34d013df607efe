"""Fanout events: one producer event addressed to a topic or an audience predicate, sent through the
campaign machinery. :func:`fanout_create` turns the accepted event, in its transaction, into a
scheduled ``Campaign`` of kind *fanout* and its launch event. See docs/architecture.md, "Topics and
fanout events"."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

from campaigns.models import Campaign, CampaignKind, CampaignState
from campaigns.predicates import validate_predicate
from notifications.channels import ALL_CHANNELS, Channel
from notifications.models import NotificationTemplate, NotificationType
from notifications.outbox.services import enqueue_messages

#: Recipients one event may leave out (``target.exclude``): the actor, a few moderators.
MAX_EXCLUDE = 1000


@dataclass(frozen=True)
class FanoutTarget:
    """Whom a fanout event reaches: a topic's subscribers or a predicate's audience, minus ``exclude``."""

    topic: str | None = None
    audience: dict[str, Any] | None = None
    exclude: Sequence[str] = field(default_factory=tuple)

    def describe(self) -> str:
        return f"topic {self.topic}" if self.topic is not None else "an audience predicate"


def target_problems(target: dict[str, Any]) -> dict[str, list[str]]:
    """Field → reasons for a target as sent (``{"topic": key}`` or ``{"audience": predicate}``, an
    optional ``exclude``); empty when it is valid and the topic exists."""
    from subscriptions.models import Topic

    errors: dict[str, list[str]] = {}
    has_topic, has_audience = "topic" in target, "audience" in target
    if has_topic == has_audience:
        errors["non_field_errors"] = ['Give either "topic" or "audience".']
        return errors
    if has_topic and not Topic.objects.filter(key=target["topic"]).exists():
        errors["topic"] = [f"No topic has the key {target['topic']!r}."]
    if has_audience:
        try:
            validate_predicate(target["audience"])
        except ValidationError as exc:
            errors["audience"] = exc.messages
    return errors


def fanout_channels(notification_type: NotificationType) -> list[str]:
    """The channels a fanout of the type may use: those with a default template (webhook without one:
    it sends the event's data); the audience page then applies the type's defaults and each user's opt-ins."""
    with_templates = set(
        NotificationTemplate.objects.filter(notification_type=notification_type, locale="").values_list(
            "channel", flat=True
        )
    )
    return [c for c in ALL_CHANNELS if c in with_templates or c == Channel.WEBHOOK]


def fanout_create(
    *,
    event_id: uuid.UUID,
    producer_event_id: str,
    service: str,
    type_key: str,
    target: FanoutTarget,
    data: dict[str, Any],
    now: dt.datetime,
) -> Campaign:
    """The fanout row of a newly accepted event and its launch event, in the caller's transaction.

    Whatever went away since the request was validated (the topic deleted, the type disabled) makes a
    *failed* fanout with the reason, not a failed commit for the other events of the group."""
    from campaigns.services import _event
    from preferences.recipient_ids import resolve_recipients
    from subscriptions.models import Topic

    notification_type = NotificationType.objects.filter(key=type_key).first()
    topic = Topic.objects.filter(key=target.topic).first() if target.topic is not None else None
    excluded = sorted(set(resolve_recipients(target.exclude).values())) if target.exclude else []
    failure = ""
    if notification_type is None or not notification_type.enabled:
        failure = f"notification type {type_key} is unknown or disabled"
    elif target.topic is not None and topic is None:
        failure = f"topic {target.topic} no longer exists"
    channels = fanout_channels(notification_type) if notification_type is not None else []
    campaign = Campaign(
        kind=CampaignKind.FANOUT,
        name=f"{type_key} → {target.describe()}"[:200],
        notification_type=notification_type or NotificationType.objects.get(key=type_key),
        channels=channels,
        audience=target.audience if target.audience is not None else {"all": []},
        topic=topic,
        exclude_user_ids=excluded,
        event_data=data,
        source_service=service,
        producer_event_id=producer_event_id,
        state=CampaignState.FAILED if failure else CampaignState.SCHEDULED,
        failure_reason=failure,
        state_changed_at=now,
        launch_id=event_id,
        launched_at=now,
        finished_at=now if failure else None,
    )
    campaign.save()
    if not failure:
        enqueue_messages([_event(campaign, "campaign.launched", now=now, scheduled_for=now.isoformat())])
    return campaign
