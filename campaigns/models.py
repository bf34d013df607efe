"""Campaign models: the campaign (definition, state, live progress), its per-channel copy and its launch.

* :class:`Campaign` is what a marketer edits in the admin: a notification type (category, so
  preferences apply), an audience predicate, channels, copy, a schedule and an optional throttle,
  plus the state machine and the progress snapshot flushed from Redis.
* :class:`CampaignCopy` is the text of one channel in one locale ('' is the fallback), rendered per
  recipient by the batch expander.
* :class:`CampaignLaunch` is one launch as the orchestrator sees it: created from the launch event
  on ``notif.campaigns``, it holds the keyset checkpoint (last user id, next batch number), so a
  crash or a pause resumes where it stopped.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from notifications.channels import Channel
from notifications.models import NotificationType


class CampaignState(models.TextChoices):
    DRAFT = "draft", "Draft"
    SCHEDULED = "scheduled", "Scheduled"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"


#: States from which nothing moves any more.
TERMINAL_STATES = frozenset({CampaignState.COMPLETED, CampaignState.CANCELLED, CampaignState.FAILED})
#: States in which the orchestrator and the expanders work on a launch (or will, when it is due).
ACTIVE_STATES = frozenset({CampaignState.SCHEDULED, CampaignState.RUNNING, CampaignState.PAUSED})

#: The state machine: state → states it may move to.
TRANSITIONS: dict[str, frozenset[str]] = {
    CampaignState.DRAFT: frozenset({CampaignState.SCHEDULED, CampaignState.CANCELLED}),
    CampaignState.SCHEDULED: frozenset({CampaignState.RUNNING, CampaignState.CANCELLED, CampaignState.FAILED}),
    CampaignState.RUNNING: frozenset(
        {CampaignState.PAUSED, CampaignState.COMPLETED, CampaignState.CANCELLED, CampaignState.FAILED}
    ),
    CampaignState.PAUSED: frozenset({CampaignState.RUNNING, CampaignState.CANCELLED, CampaignState.FAILED}),
    CampaignState.COMPLETED: frozenset(),
    CampaignState.CANCELLED: frozenset(),
    CampaignState.FAILED: frozenset(),
}


class CampaignKind(models.TextChoices):
    CAMPAIGN = "campaign", "Campaign"
    FANOUT = "fanout", "Fanout event"


def default_audience() -> dict:
    return {"all": []}


def default_campaign_channels() -> list[str]:
    return [Channel.EMAIL.value]


class Campaign(models.Model):
    """A marketing send to everyone matching a predicate, on chosen channels, at a chosen time; or
    (``kind`` fanout) a producer's event addressed to a topic or a predicate, sent with its type's
    templates and the event's data (``campaigns.fanout``)."""

    kind = models.CharField(max_length=10, choices=CampaignKind.choices, default=CampaignKind.CAMPAIGN, editable=False)
    name = models.CharField(max_length=200)
    notification_type = models.ForeignKey(
        NotificationType,
        on_delete=models.PROTECT,
        related_name="campaigns",
        help_text="Its category decides which opt-outs apply; its default channels who gets a channel by default.",
    )
    channels = models.JSONField(default=default_campaign_channels, help_text="Channels to send on.")
    audience = models.JSONField(
        default=default_audience,
        blank=True,
        help_text='Audience predicate, e.g. {"all": [{"field": "attributes.country", "op": "eq", "value": "DE"}]}.',
    )
    schedule_at = models.DateTimeField(
        null=True, blank=True, help_text="When to start (stored in UTC). Empty: as soon as it is launched."
    )
    schedule_timezone = models.CharField(
        max_length=64, default="UTC", help_text="IANA time zone the schedule was entered in, e.g. Europe/Berlin."
    )
    throttle = models.PositiveIntegerField(
        null=True, blank=True, help_text="Campaign throttle: at most this many sends per second (all channels)."
    )

    state = models.CharField(max_length=12, choices=CampaignState.choices, default=CampaignState.DRAFT)
    state_changed_at = models.DateTimeField(default=timezone.now)
    failure_reason = models.CharField(max_length=500, blank=True)
    launch_id = models.UUIDField(null=True, blank=True, editable=False, unique=True)
    launched_at = models.DateTimeField(null=True, blank=True)
    launched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Progress: written by the orchestrator at each checkpoint (exact) and by the periodic flush of
    # the Redis counters (expansion and delivery outcomes).
    audience_size = models.PositiveBigIntegerField(null=True, blank=True)
    batches_emitted = models.PositiveIntegerField(default=0)
    recipients_emitted = models.PositiveBigIntegerField(default=0, help_text="(user, channel) pairs in batches.")
    suppressed_preferences = models.PositiveBigIntegerField(
        default=0, help_text="(user, channel) pairs left out in SQL: opted out, muted, no contact point."
    )
    queued = models.PositiveBigIntegerField(default=0, help_text="Per-recipient messages handed to the workers.")
    suppressed_expansion = models.PositiveBigIntegerField(default=0)
    extra_messages = models.BigIntegerField(default=0, help_text="Push messages beyond one per user (per platform).")
    sent = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(default=0)
    deduplicated = models.PositiveBigIntegerField(default=0)
    progress_flushed_at = models.DateTimeField(null=True, blank=True)

    # A fanout event: whom it targets besides the predicate, and what it carries.
    topic = models.ForeignKey(
        "subscriptions.Topic",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="fanouts",
        editable=False,
        help_text="Fanout to a topic: only its subscribers (who also match the predicate).",
    )
    exclude_user_ids = models.JSONField(default=list, blank=True, editable=False, help_text="Users left out.")
    event_data = models.JSONField(default=dict, blank=True, editable=False, help_text="The event's data.")
    source_service = models.CharField(max_length=100, blank=True, editable=False)
    producer_event_id = models.CharField(max_length=200, blank=True, editable=False)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("launch_campaign", "Can launch, pause, resume and cancel campaigns")]
        indexes = [
            models.Index(fields=["state"], name="campaign_state"),
            models.Index(
                fields=["state_changed_at"],
                name="campaign_fanout_changed",
                condition=models.Q(kind=CampaignKind.FANOUT),
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_fanout(self) -> bool:
        return self.kind == CampaignKind.FANOUT

    @property
    def is_editable(self) -> bool:
        return self.state == CampaignState.DRAFT

    @property
    def suppressed(self) -> int:
        return self.suppressed_preferences + self.suppressed_expansion

    def clean(self) -> None:
        from campaigns.predicates import validate_predicate
        from preferences.models import validate_timezone

        errors: dict[str, list[str]] = {}
        channels = self.channels if isinstance(self.channels, list) else None
        if not channels:
            errors["channels"] = ["Choose at least one channel."]
        elif unknown := [c for c in channels if c not in Channel.values]:
            errors["channels"] = [f"Unknown channel(s): {', '.join(map(str, unknown))}."]
        try:
            validate_predicate(self.audience)
        except ValidationError as exc:
            errors["audience"] = exc.messages
        try:
            validate_timezone(self.schedule_timezone)
        except ValidationError as exc:
            errors["schedule_timezone"] = exc.messages
        if self.throttle is not None and self.throttle < 1:
            errors["throttle"] = ["The throttle must be at least 1 send per second (or empty for none)."]
        if errors:
            raise ValidationError(errors)


class CampaignCopy(models.Model):
    """The text of a campaign on one channel in one locale ('' is the fallback; most specific wins).

    Fields are Django templates rendered per recipient with ``user`` (id, email, first_name),
    ``profile`` (locale, attributes), ``campaign`` (id, name) and ``unsubscribe_url``.
    """

    campaign = models.ForeignKey(Campaign, related_name="copies", on_delete=models.CASCADE)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    locale = models.CharField(max_length=20, blank=True, help_text="Empty for the default; e.g. 'de' or 'de-ch'.")
    subject = models.CharField(max_length=300, blank=True, help_text="Email subject.")
    title = models.CharField(max_length=200, blank=True, help_text="Push / in-app title.")
    body = models.TextField(blank=True, help_text="Email plain text, push / in-app / SMS body.")
    html = models.TextField(blank=True, help_text="Email HTML (autoescaped).")
    payload = models.TextField(blank=True, help_text="Webhook JSON body template.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["campaign", "channel", "locale"], name="campaign_copy_unique")]
        ordering = ["campaign", "channel", "locale"]
        verbose_name = "campaign copy"
        verbose_name_plural = "campaign copy"

    def __str__(self) -> str:
        return f"{self.channel}/{self.locale or 'default'}"

    def save(self, *args, **kwargs):
        self.locale = self.locale.lower().replace("_", "-")
        super().save(*args, **kwargs)

    def clean(self) -> None:
        from campaigns.rendering import validate_copy

        validate_copy(self)


class CampaignLaunch(models.Model):
    """One launch as the orchestrator works through it: the keyset checkpoint, committed after each
    batch's messages were acknowledged by Kafka."""

    launch_id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    campaign = models.ForeignKey(Campaign, related_name="launches", on_delete=models.CASCADE)
    scheduled_for = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    last_user_id = models.BigIntegerField(default=0, help_text="Keyset cursor: every user id ≤ this is emitted.")
    next_batch = models.PositiveIntegerField(default=0)
    batch_messages = models.PositiveIntegerField(default=0, help_text="Batch messages emitted (batches × channels).")
    emitted_per_channel = models.JSONField(default=dict, blank=True, help_text="Recipients in batches, per channel.")
    matched = models.PositiveBigIntegerField(default=0, help_text="Users the pages matched (the exact audience).")
    emission_finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["scheduled_for"], name="campaignlaunch_due")]

    def __str__(self) -> str:
        return f"launch {self.launch_id} of campaign #{self.campaign_id}"
