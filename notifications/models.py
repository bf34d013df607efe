"""Models of the notification core: the outbox, producer API keys, accepted events, types."""

import datetime as dt
import hashlib
import secrets
import zlib
from typing import Any

import orjson
from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from notifications.channels import Channel


def bucket_for_key(key: str, buckets: int | None = None) -> int:
    """Stable key bucket (CRC32 mod N): relays own buckets, so per-key order survives several relays."""
    n = buckets or settings.OUTBOX_BUCKETS
    return zlib.crc32(key.encode()) % n


class OutboxEvent(models.Model):
    """A message waiting to be produced to Kafka, written in the same transaction as the change.

    The relay deletes a row only after the broker acknowledged it; see `outbox/relay.py`.
    """

    id = models.BigAutoField(primary_key=True)
    topic = models.CharField(max_length=249)
    key = models.CharField(max_length=255)
    bucket = models.SmallIntegerField()
    #: 0 = priority lane, 1 = bulk lane (from the topic): the relay claims lane 0 first.
    lane = models.SmallIntegerField(db_default=0)
    # JSON stored as text, serialised once at publish: the relay sends these bytes as they are.
    # (jsonb would cost a parse on insert and a jsonb→text conversion per row on every relay batch.)
    payload = models.TextField()
    headers = models.TextField(default="{}", blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # The relay claims by (lane, id), filtering its buckets on the way: a (bucket, id) index would
        # give rows out of id order, and every insert and claim would pay for it.
        indexes = [models.Index(fields=["lane", "id"], name="outbox_lane_id")]
        verbose_name = "outbox event"

    def __str__(self) -> str:
        return f"{self.topic} key={self.key} #{self.id}"

    @property
    def payload_json(self) -> Any:
        return orjson.loads(self.payload)

    @property
    def headers_json(self) -> dict[str, str]:
        return orjson.loads(self.headers or "{}")


class ApiKey(models.Model):
    """A producer service's API key. Only a SHA-256 of the secret is stored.

    Keys are 32 random bytes, so a fast hash is safe here (no dictionary to attack) and keeps
    authentication off the request's critical path, unlike a password hasher.
    """

    PREFIX_LENGTH = 8

    service = models.CharField(max_length=100, help_text="Name of the producing service, e.g. 'orders'.")
    prefix = models.CharField(max_length=PREFIX_LENGTH, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, editable=False
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    quota_rate = models.FloatField(
        null=True,
        blank=True,
        help_text="Events per second this key may publish (empty: no quota). Counted in events, not requests.",
    )
    quota_burst = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Events a burst may hold above the rate (empty: one second of the rate). A request with more "
        "events than this is refused.",
    )

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        state = "revoked" if self.revoked_at else "active"
        return f"{self.service} ({self.prefix}…, {state})"

    @staticmethod
    def hash_secret(raw_key: str) -> str:
        return hashlib.sha256(raw_key.encode()).hexdigest()

    @classmethod
    def generate(cls, *, service: str, created_by=None) -> tuple["ApiKey", str]:
        """Create a key and return it with the raw secret, which is shown once and never stored."""
        prefix = secrets.token_hex(cls.PREFIX_LENGTH // 2)
        raw = f"np_{prefix}_{secrets.token_urlsafe(32)}"
        key = cls.objects.create(service=service, prefix=prefix, key_hash=cls.hash_secret(raw), created_by=created_by)
        return key, raw

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.quota_rate is not None and self.quota_rate <= 0:
            raise ValidationError({"quota_rate": "The rate must be positive (or empty for no quota)."})
        if self.quota_burst is not None and self.quota_rate is None:
            raise ValidationError({"quota_burst": "A burst needs a rate."})
        if self.quota_burst is not None and self.quota_burst < 1:
            raise ValidationError({"quota_burst": "The burst must be at least 1."})


class AcceptedEvent(models.Model):
    """The record that makes ingestion idempotent: one row per (service, producer event id)."""

    id = models.UUIDField(primary_key=True, help_text="Platform event id (uuid5 of service and event_id).")
    service = models.CharField(max_length=100)
    producer_event_id = models.CharField(max_length=200)
    type = models.CharField(max_length=100)
    recipient_count = models.PositiveIntegerField()
    accepted_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        verbose_name = "accepted event"

    def __str__(self) -> str:
        return f"{self.type} {self.producer_event_id} from {self.service}"


class Category(models.TextChoices):
    TRANSACTIONAL = "transactional", "Transactional"
    SECURITY = "security", "Account / security"
    MARKETING = "marketing", "Marketing"
    PRODUCT = "product", "Product updates"
    SOCIAL = "social", "Social"


#: Categories a user cannot opt out of.
MANDATORY_CATEGORIES = frozenset({Category.SECURITY})


class Urgency(models.TextChoices):
    URGENT = "urgent", "Urgent (ignores quiet hours)"
    NORMAL = "normal", "Normal"
    BULK = "bulk", "Bulk (lowest priority)"


def default_channels() -> list[str]:
    return [Channel.EMAIL.value]


class NotificationType(models.Model):
    """A kind of notification producers may emit, e.g. `order.shipped`."""

    key = models.CharField(
        max_length=100,
        unique=True,
        validators=[
            RegexValidator(
                r"^[a-z0-9][a-z0-9_.-]*$",
                "Use lower-case letters, digits, '.', '_' and '-', e.g. order.shipped.",
            )
        ],
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    category = models.CharField(max_length=20, choices=Category.choices, default=Category.TRANSACTIONAL)
    urgency = models.CharField(max_length=10, choices=Urgency.choices, default=Urgency.NORMAL)
    default_channels = models.JSONField(default=default_channels)
    sample_payload = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class NotificationTemplate(models.Model):
    """The copy of one notification type on one channel, in one locale ('' is the fallback).

    Fields are Django templates rendered with the event's data: email uses subject, body (text) and
    html; push and in-app use title and body; SMS uses body; webhook uses payload (a JSON template).
    """

    notification_type = models.ForeignKey(NotificationType, related_name="templates", on_delete=models.CASCADE)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    locale = models.CharField(
        max_length=20, blank=True, help_text="Empty for the default; e.g. 'de' or 'de-ch' (most specific wins)."
    )
    subject = models.CharField(max_length=300, blank=True, help_text="Email subject.")
    title = models.CharField(max_length=200, blank=True, help_text="Push / in-app title.")
    body = models.TextField(blank=True, help_text="Email plain text, push / in-app / SMS body.")
    html = models.TextField(blank=True, help_text="Email HTML (autoescaped).")
    payload = models.TextField(blank=True, help_text="Webhook JSON body template; empty sends the event data.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["notification_type", "channel", "locale"], name="template_unique_locale")
        ]
        ordering = ["notification_type", "channel", "locale"]

    def __str__(self) -> str:
        return f"{self.notification_type_id}/{self.channel}/{self.locale or 'default'}"

    def save(self, *args, **kwargs):
        self.locale = self.locale.lower().replace("_", "-")
        super().save(*args, **kwargs)

    def clean(self) -> None:
        from notifications.dispatch.templating import validate_template

        validate_template(self)


class KillSwitchMode(models.TextChoices):
    NORMAL = "normal", "Normal"
    DELAY = "delay", "Delay non-urgent (park in notif.<channel>.delayed)"
    DROP_NON_URGENT = "drop_non_urgent", "Drop non-urgent"
    PAUSE = "pause", "Pause (park everything)"


class KillSwitch(models.Model):
    """An operator's brake on a channel (or one provider of it), honoured within seconds."""

    channel = models.CharField(max_length=10, choices=Channel.choices)
    provider = models.CharField(max_length=50, blank=True, help_text="Empty for the whole channel.")
    mode = models.CharField(max_length=20, choices=KillSwitchMode.choices, default=KillSwitchMode.NORMAL)
    reason = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["channel", "provider"], name="killswitch_unique")]
        verbose_name_plural = "kill switches"

    def __str__(self) -> str:
        return f"{self.channel}{'/' + self.provider if self.provider else ''}: {self.mode}"


class DeliveryStatus(models.TextChoices):
    SUPPRESSED = "suppressed", "Suppressed"
    SCHEDULED = "scheduled", "Deferred (quiet hours)"
    PARKED = "parked", "Parked by kill switch"
    QUEUED = "queued", "Queued"
    SENT = "sent", "Sent"
    RETRYING = "retrying", "Retrying"
    FAILED = "failed", "Failed"
    DLQ = "dlq", "In DLQ"


def utc_today() -> dt.date:
    return timezone.now().date()


class DeliveryLog(models.Model):
    """One row per (event, user, channel): what happened to it and why. Written in batches.

    The table is partitioned by day on `created_day` (`notifications/log_partitions.py`); the
    database's primary key is (id, created_day), `id` alone stays unique (one identity sequence).
    """

    event_id = models.UUIDField()
    user_id = models.BigIntegerField()
    channel = models.CharField(max_length=10, choices=Channel.choices)
    type = models.CharField(max_length=100)
    status = models.CharField(max_length=12, choices=DeliveryStatus.choices)
    reason = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=50, blank=True)
    provider_message_id = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    #: The partition key: the UTC day the event was accepted, the same on every redelivery.
    created_day = models.DateField(default=utc_today, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event_id", "user_id", "channel", "created_day"], name="deliverylog_unique")
        ]
        indexes = [
            models.Index(fields=["user_id", "-created_at"], name="deliverylog_user"),
            models.Index(fields=["status", "-created_at"], name="deliverylog_status"),
        ]

    def __str__(self) -> str:
        return f"{self.event_id}/{self.user_id}/{self.channel}: {self.status}"


class ScheduledMessage(models.Model):
    """A ready message held until `due_at` (quiet hours); moved to the outbox when due."""

    due_at = models.DateTimeField(db_index=True)
    topic = models.CharField(max_length=249)
    key = models.CharField(max_length=255)
    payload = models.JSONField()
    headers = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.topic} key={self.key} due {self.due_at:%Y-%m-%d %H:%M}"


class ProviderKind(models.TextChoices):
    SENDGRID = "sendgrid", "SendGrid (v3 Mail Send)"
    ANYMAIL = "anymail", "Any ESP via django-anymail (EMAIL_BACKEND)"
    SMTP = "smtp", "SMTP"
    TWILIO = "twilio", "Twilio Messages"
    FCM = "fcm", "Firebase Cloud Messaging (HTTP v1)"
    APNS = "apns", "Apple Push Notification service"
    WEBHOOK = "webhook", "Webhook (Standard Webhooks)"
    INAPP = "inapp", "In-app inbox"


class Provider(models.Model):
    """A provider contract on one channel: its rate limit, burst, failover order and switch.

    Credentials never live here: the adapter for `kind` reads them from settings/environment.
    """

    name = models.SlugField(max_length=50, unique=True, help_text="Also the token bucket's name.")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    kind = models.CharField(max_length=20, choices=ProviderKind.choices)
    rate = models.FloatField(help_text="Contract rate, requests per second, shared by every worker.")
    burst = models.PositiveIntegerField(
        default=10, help_text="Bucket capacity. The largest count in any 1 s window is at most rate + burst."
    )
    transactional_reserve = models.PositiveIntegerField(
        default=0, help_text="Tokens bulk traffic may never take, kept for transactional messages."
    )
    priority = models.PositiveSmallIntegerField(default=1, help_text="Failover order: lower is tried first.")
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["channel", "priority", "name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.channel}, {self.rate:g}/s)"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        if self.rate is not None and self.rate <= 0:
            raise ValidationError({"rate": "The rate must be positive."})
        if self.burst is not None and self.burst < 1:
            raise ValidationError({"burst": "The burst must be at least 1."})
        if self.transactional_reserve and self.burst and self.transactional_reserve >= self.burst:
            raise ValidationError({"transactional_reserve": "The reserve must be smaller than the burst."})


class OutboxFailure(models.Model):
    """An outbox row the broker refused for good (unknown topic, too large, …).

    Moved here instead of blocking every row behind it; nothing accepted is lost: an operator fixes
    the cause (creates the topic, raises the limit) and requeues it from the admin.
    """

    original_id = models.BigIntegerField()
    topic = models.CharField(max_length=249)
    key = models.CharField(max_length=255)
    payload = models.JSONField()
    headers = models.JSONField(default=dict)
    created_at = models.DateTimeField()
    failed_at = models.DateTimeField(default=timezone.now)
    error = models.CharField(max_length=500)

    class Meta:
        ordering = ["-failed_at"]

    def __str__(self) -> str:
        return f"{self.topic} key={self.key}: {self.error}"
