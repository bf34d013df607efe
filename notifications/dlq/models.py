"""Models of DLQ triage: one row per dead letter, the triage rules, and the audit of replays/discards.

The tables keep the names they had while these models belonged to the `notifications` app.
"""

from django.conf import settings
from django.db import models
from django.utils import timezone


class DeadLetterCategory(models.TextChoices):
    INVALID_ADDRESS = "invalid_address", "Invalid address / dead token"
    INVALID_PAYLOAD = "invalid_payload", "Invalid payload"
    PROVIDER_AUTH = "provider_auth", "Provider auth / configuration"
    RETRIES_EXHAUSTED = "retries_exhausted", "Retries exhausted"
    PROVIDER_OUTAGE = "provider_outage", "Provider outage"
    UNKNOWN = "unknown", "Unknown (pages on-call)"


class DeadLetterStatus(models.TextChoices):
    OPEN = "open", "Open"
    REPLAYED = "replayed", "Replayed"
    DISCARDED = "discarded", "Discarded"


class DeadLetterSource(models.TextChoices):
    """Where the entry came from: a channel's DLQ, or the dispatcher's events DLQ."""

    EMAIL = "email", "Email"
    PUSH = "push", "Push"
    SMS = "sms", "SMS"
    INAPP = "inapp", "In-app"
    WEBHOOK = "webhook", "Webhook"
    EVENTS = "events", "Events (dispatcher)"


class DeadLetter(models.Model):
    """One message that reached a DLQ topic, idempotent by `message_id`.

    `message_id` is the idempotency-key header (channel DLQs), `<envelope id>:<recipient>` for the
    events DLQ, or `raw:<sha256 of topic/partition/offset>` for a message nothing could be read from.
    A row is reopened (not duplicated) when the same message fails again after a replay.
    """

    message_id = models.CharField(max_length=255, unique=True)
    channel = models.CharField(max_length=10, choices=DeadLetterSource.choices)
    provider = models.CharField(max_length=50, blank=True)
    recipient = models.CharField(max_length=500, blank=True, help_text="Address, phone, device token, URL or user id.")
    user_id = models.BigIntegerField(null=True, blank=True)
    event_id = models.CharField(max_length=100, blank=True)
    event_type = models.CharField(max_length=100, blank=True)

    dlq_topic = models.CharField(max_length=249)
    dlq_partition = models.IntegerField()
    dlq_offset = models.BigIntegerField()
    origin_topic = models.CharField(max_length=249, blank=True)
    message_key = models.CharField(max_length=255, blank=True)
    payload = models.JSONField(null=True, blank=True, help_text="The original message (JSON).")
    raw_payload = models.TextField(blank=True, help_text="The original bytes, when they were not JSON.")
    headers = models.JSONField(default=dict, blank=True)

    error_class = models.CharField(max_length=50, blank=True)
    cause_class = models.CharField(max_length=50, blank=True, help_text="Class of the last error in the history.")
    error_code = models.CharField(max_length=100, blank=True, help_text="Provider error code of the last error.")
    error_message = models.TextField(blank=True)
    errors = models.JSONField(default=list, blank=True, help_text="Full error history, oldest first.")
    attempts = models.PositiveIntegerField(default=0)
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()

    category = models.CharField(max_length=20, choices=DeadLetterCategory.choices, default=DeadLetterCategory.UNKNOWN)
    rule = models.ForeignKey("TriageRule", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    fingerprint = models.CharField(max_length=32)
    status = models.CharField(max_length=10, choices=DeadLetterStatus.choices, default=DeadLetterStatus.OPEN)
    failure_count = models.PositiveIntegerField(default=1, help_text="Times this message was dead-lettered.")
    replay_count = models.PositiveIntegerField(default=0)
    replayed_at = models.DateTimeField(null=True, blank=True)
    discarded_reason = models.CharField(max_length=500, blank=True)
    last_audit = models.ForeignKey("DlqAudit", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    page_pending = models.BooleanField(default=False)
    paged_at = models.DateTimeField(null=True, blank=True, help_text="Set on the entry whose arrival paged on-call.")
    stored_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "notifications_deadletter"
        verbose_name = "dead letter"
        permissions = [
            ("replay_deadletter", "Can replay dead letters"),
            ("discard_deadletter", "Can discard dead letters"),
        ]
        indexes = [
            models.Index(fields=["status", "-last_failed_at"], name="deadletter_status"),
            models.Index(fields=["category", "status"], name="deadletter_category"),
            models.Index(fields=["fingerprint"], name="deadletter_fingerprint"),
            models.Index(fields=["-last_failed_at"], name="deadletter_last_failed"),
            models.Index(fields=["recipient"], name="deadletter_recipient"),
            models.Index(fields=["event_id"], name="deadletter_event"),
            models.Index(fields=["user_id"], name="deadletter_user"),
            models.Index(fields=["fingerprint"], name="deadletter_page_pending", condition=models.Q(page_pending=True)),
            models.Index(
                fields=["updated_at"],
                name="deadletter_resolved",
                condition=models.Q(status__in=[DeadLetterStatus.REPLAYED, DeadLetterStatus.DISCARDED]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel} {self.message_id} ({self.category}, {self.status})"


class TriageRule(models.Model):
    """Maps dead letters onto a category. Every condition that is set must hold; the first enabled
    rule by `priority` wins; an entry no rule matches is `unknown` (and pages on-call).

    List fields are comma-separated; a value matches if it is one of them (case-insensitive).
    """

    name = models.CharField(max_length=100, unique=True)
    priority = models.PositiveIntegerField(default=100, help_text="Lower is tried first.")
    enabled = models.BooleanField(default=True)
    channel = models.CharField(max_length=10, choices=DeadLetterSource.choices, blank=True)
    provider = models.CharField(max_length=50, blank=True, help_text="Provider name; empty for any.")
    error_classes = models.CharField(
        max_length=300, blank=True, help_text="DLQ error classes (error-class header), e.g. 'invalid_contact'."
    )
    cause_classes = models.CharField(
        max_length=300, blank=True, help_text="Class of the last error in the history, e.g. 'transient'."
    )
    provider_codes = models.CharField(
        max_length=300, blank=True, help_text="Provider error codes or HTTP statuses, e.g. '21211, http_401, 401'."
    )
    message_pattern = models.CharField(
        max_length=500, blank=True, help_text="Regular expression searched in the error message (case-insensitive)."
    )
    category = models.CharField(max_length=20, choices=DeadLetterCategory.choices)
    description = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "notifications_triagerule"
        ordering = ["priority", "id"]
        verbose_name = "DLQ triage rule"

    def __str__(self) -> str:
        return f"{self.name} → {self.category}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        from notifications.dlq.rules import InvalidRule, compile_rule

        try:
            compile_rule(self)
        except InvalidRule as exc:
            raise ValidationError({exc.field: str(exc)}) from exc


class DlqAudit(models.Model):
    """Who replayed, discarded or drained what, when, and how many."""

    class Action(models.TextChoices):
        REPLAY = "replay", "Replay"
        DISCARD = "discard", "Discard"
        DRAIN = "drain", "Drain parked messages"
        RECATEGORISE = "recategorise", "Re-apply triage rules"

    action = models.CharField(max_length=15, choices=Action.choices)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_name = models.CharField(max_length=150, help_text="Kept if the user is deleted.")
    at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    requested = models.PositiveIntegerField(default=0, help_text="Entries selected when the action was confirmed.")
    count = models.PositiveIntegerField(default=0, help_text="Entries acted upon.")
    skipped = models.PositiveIntegerField(default=0, help_text="Selected, but not acted upon (already replayed, …).")
    reason = models.CharField(max_length=500, blank=True)
    selection = models.TextField(blank=True, help_text="The filter or selection the action ran on.")

    class Meta:
        db_table = "notifications_dlqaudit"
        ordering = ["-at"]
        verbose_name = "DLQ audit entry"
        verbose_name_plural = "DLQ audit"
        indexes = [models.Index(fields=["-at"], name="dlqaudit_at")]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_name}: {self.count} at {self.at:%Y-%m-%d %H:%M}"
