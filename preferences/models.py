"""Preference models: recipients' contact points, push devices, preference documents, in-app inbox.

* :class:`RecipientProfile` holds the producer's external id of a user and what the platform needs to
  reach them besides ``User.email`` (phone, locale, time zone, webhook URL) plus the "invalid since"
  marks set after hard bounces.
* :class:`Device` is one push token (FCM or APNs); a token belongs to at most one user at a time.
* :class:`PreferenceDocument` is the user's opt-in/opt-out document (validated by
  :mod:`preferences.schema`), versioned so the Redis cache can refuse stale writes.
* :class:`InboxMessage` is one in-app notification, stored once per notification id.
"""

from __future__ import annotations

import re
import zoneinfo

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from notifications.models import Category

__all__ = [
    "Device",
    "DevicePlatform",
    "InboxMessage",
    "PreferenceDocument",
    "RecipientProfile",
    "validate_e164",
    "validate_external_id",
    "validate_timezone",
]


def validate_e164(value: str) -> None:
    """Accept only a valid phone number written in E.164 (``+`` and digits, e.g. ``+4915112345678``)."""
    if not value:
        return
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValidationError("Enter a phone number in E.164 format, e.g. +4915112345678.") from exc
    if (
        not phonenumbers.is_valid_number(parsed)
        or phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) != value
    ):
        raise ValidationError("Enter a valid phone number in E.164 format, e.g. +4915112345678.")


#: A producer's id for a recipient: 1 to 255 characters, no whitespace or control characters, and none
#: of ``/ ? #`` (it is a path segment of ``/api/v1/recipients/{id}``).
EXTERNAL_ID_MAX_LENGTH = 255
#: What an external id may not contain: whitespace (as both Python and ECMAScript regular expressions
#: define it, so the OpenAPI pattern means the same to clients), control characters and URL delimiters.
_EXTERNAL_ID_EXCLUDED = r"\s\x00-\x1f\x7f\x85\ufeff/?#"
#: Lone surrogates are refused too (PostgreSQL cannot store them); they are not Unicode text, so the
#: OpenAPI pattern cannot name them (nor can a UTF-8 client send them).
EXTERNAL_ID = re.compile(rf"\A[^{_EXTERNAL_ID_EXCLUDED}\ud800-\udfff]{{1,255}}\Z")
#: :data:`EXTERNAL_ID` as an OpenAPI (ECMAScript) pattern; the length is the schema's maxLength.
EXTERNAL_ID_PATTERN = rf"^[^{_EXTERNAL_ID_EXCLUDED}]+$"


def validate_external_id(value: str) -> None:
    """Accept only an external id :data:`EXTERNAL_ID` matches."""
    if not isinstance(value, str) or EXTERNAL_ID.fullmatch(value) is None:
        raise ValidationError(
            "Enter 1 to 255 characters without spaces, control characters, '/', '?' or '#', e.g. u-42."
        )


def validate_timezone(value: str) -> None:
    """Accept only an IANA time zone name known to :mod:`zoneinfo` (e.g. ``Europe/Berlin``)."""
    if not value:
        return
    if value not in _available_timezones():
        raise ValidationError(f"'{value}' is not an IANA time zone such as Europe/Berlin.")


_TIMEZONES: frozenset[str] | None = None


def _available_timezones() -> frozenset[str]:
    global _TIMEZONES
    if _TIMEZONES is None:
        _TIMEZONES = frozenset(zoneinfo.available_timezones())
    return _TIMEZONES


class RecipientProfile(models.Model):
    """How to reach a user (besides ``User.email``) and which contact points are known to be dead."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="recipient_profile")
    external_id = models.CharField(
        max_length=EXTERNAL_ID_MAX_LENGTH,
        unique=True,
        null=True,
        blank=True,
        validators=[validate_external_id],
        help_text="The producer's id for this recipient (events and the identify API use it). Empty: the "
        "recipient is addressed by its internal user id.",
    )
    phone = models.CharField(
        max_length=20, blank=True, validators=[validate_e164], help_text="E.164, e.g. +4915112345678."
    )
    locale = models.CharField(max_length=35, blank=True, help_text="BCP 47 language tag, e.g. en or de-CH.")
    timezone = models.CharField(max_length=64, blank=True, validators=[validate_timezone], help_text="IANA name.")
    attributes = models.JSONField(default=dict, blank=True, help_text="Free attributes for campaign targeting.")
    webhook_url = models.URLField(max_length=2000, blank=True)

    email_invalid_at = models.DateTimeField(null=True, blank=True)
    email_invalid_address = models.CharField(
        max_length=254, blank=True, help_text="The address that bounced; a changed User.email is valid again."
    )
    email_invalid_reason = models.CharField(max_length=200, blank=True)
    phone_invalid_at = models.DateTimeField(null=True, blank=True)
    phone_invalid_reason = models.CharField(max_length=200, blank=True)
    webhook_invalid_at = models.DateTimeField(null=True, blank=True)
    webhook_invalid_reason = models.CharField(max_length=200, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "recipient profile"

    def __str__(self) -> str:
        return f"recipient {self.external_id}" if self.external_id else f"profile of user #{self.user_id}"


class DevicePlatform(models.TextChoices):
    FCM = "fcm", "Firebase Cloud Messaging"
    APNS = "apns", "Apple Push Notification service"


class Device(models.Model):
    """A push token. Unique per platform: re-registering moves it to the registering user."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="devices")
    platform = models.CharField(max_length=10, choices=DevicePlatform.choices)
    token = models.CharField(max_length=512)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    deactivation_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["platform", "token"], name="device_platform_token_uniq")]
        indexes = [
            models.Index(fields=["user"], condition=models.Q(active=True), name="device_active_user"),
            models.Index(fields=["token"], name="device_token"),
        ]

    def __str__(self) -> str:
        return f"{self.platform} …{self.token[-8:]} (user #{self.user_id}, {'active' if self.active else 'inactive'})"


class PreferenceDocument(models.Model):
    """A user's preference document; ``version`` grows by one on every write (cache fencing)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preference_document")
    document = models.JSONField(default=dict, blank=True)
    version = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "preference document"

    def __str__(self) -> str:
        return f"preferences of user #{self.user_id} (v{self.version})"


class InboxMessage(models.Model):
    """One in-app notification. ``notification_id`` is the idempotency key: redelivery stores nothing."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="inbox_messages")
    notification_id = models.CharField(max_length=200, unique=True, help_text="Idempotency key of the delivery.")
    type_key = models.CharField(max_length=100)
    category = models.CharField(max_length=20, choices=Category.choices)
    title = models.CharField(max_length=500, blank=True)
    body = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "inbox message"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-created_at", "-id"], name="inbox_user_created"),
            models.Index(fields=["user"], condition=models.Q(read_at__isnull=True), name="inbox_user_unread"),
            models.Index(fields=["created_at"], name="inbox_created"),
        ]

    def __str__(self) -> str:
        return f"{self.type_key} for user #{self.user_id}"


def validate_rs256_public_key(value: str) -> None:
    """Accept only a PEM-encoded RSA public key (``-----BEGIN PUBLIC KEY-----``)."""
    if not value:
        return
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(value.strip().encode())
    except ValueError as exc:
        raise ValidationError("Enter a PEM-encoded RSA public key (-----BEGIN PUBLIC KEY-----).") from exc
    if not isinstance(key, RSAPublicKey):
        raise ValidationError("RS256 needs an RSA public key.")


class UserTokenKey(models.Model):
    """How a producer's end-user tokens (JWT) are verified: the HS256 secret of one API key, and
    optionally an RS256 public key. Tokens name it by the API key's prefix in their ``kid`` header."""

    api_key = models.OneToOneField("notifications.ApiKey", on_delete=models.CASCADE, related_name="user_token_key")
    hs256_secret = models.CharField(
        max_length=100, editable=False, help_text="Shared with the producer's backend, which signs with it."
    )
    rs256_public_key = models.TextField(
        blank=True,
        validators=[validate_rs256_public_key],
        help_text="PEM public key; when set, RS256 tokens signed with its private key are accepted too.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "end-user token key"

    def __str__(self) -> str:
        return f"token key of {self.api_key}"
