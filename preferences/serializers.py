"""Input and output serializers of the end-user API (``/api/v1/me/…``).

The preference document is validated by :mod:`preferences.schema` (one source of truth, JSON-path
error keys); :class:`PreferenceDocumentSerializer` only describes its shape for the OpenAPI schema.
"""

from __future__ import annotations

from rest_framework import serializers

from notifications.api_fields import StrictRegexField, StrictSerializer
from notifications.channels import ALL_CHANNELS

from .models import Device, DevicePlatform, InboxMessage
from .schema import CAP_PERIODS


class QuietHoursSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    start = serializers.RegexField(r"^([01][0-9]|2[0-3]):[0-5][0-9]$", required=False, help_text="HH:MM, e.g. 22:00")
    end = serializers.RegexField(r"^([01][0-9]|2[0-3]):[0-5][0-9]$", required=False, help_text="HH:MM, e.g. 07:00")
    timezone = serializers.CharField(required=False, help_text="IANA time zone, e.g. Europe/Berlin")


class FrequencyCapSerializer(serializers.Serializer):
    max = serializers.IntegerField(min_value=0)
    per = serializers.ChoiceField(choices=CAP_PERIODS)


class PreferenceDocumentSerializer(serializers.Serializer):
    """The preference document (documentation only). Missing entries mean "the type's default"."""

    global_mute = serializers.BooleanField(required=False, help_text="Silence everything except security.")
    categories = serializers.DictField(
        child=serializers.DictField(child=serializers.BooleanField()),
        required=False,
        help_text=f"{{category: {{channel: bool}}}}; channels: {', '.join(ALL_CHANNELS)}. "
        "security cannot be set to false.",
    )
    quiet_hours = QuietHoursSerializer(required=False, allow_null=True)
    frequency_caps = serializers.DictField(
        child=serializers.DictField(child=FrequencyCapSerializer()),
        required=False,
        help_text='{category: {channel or "*": {"max": int, "per": "hour"|"day"|"week"}}}',
    )


class PreferencesOutSerializer(serializers.Serializer):
    version = serializers.IntegerField(help_text="Grows by one on every change; send it back in If-Match.")
    document = PreferenceDocumentSerializer()


#: A push token: printable ASCII without spaces (FCM and APNs tokens are), a character class both
#: Python and the schema's ECMA regular expressions read alike.
DEVICE_TOKEN_PATTERN = r"^[!-~]+$"  # noqa: S105 - a pattern, not a secret


class DeviceInSerializer(StrictSerializer):
    platform = serializers.ChoiceField(choices=DevicePlatform.choices)
    token = StrictRegexField(
        DEVICE_TOKEN_PATTERN,
        max_length=512,
        trim_whitespace=False,
        error_messages={"invalid": "Enter a push token: printable ASCII without spaces."},
    )


class DeviceOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = Device
        fields = ["id", "platform", "token", "active", "created_at", "last_seen_at"]
        read_only_fields = fields


class InboxMessageOutSerializer(serializers.ModelSerializer):
    type = serializers.CharField(source="type_key")
    read = serializers.SerializerMethodField()

    class Meta:
        model = InboxMessage
        fields = ["id", "notification_id", "type", "category", "title", "body", "data", "created_at", "read_at", "read"]
        read_only_fields = fields

    def get_read(self, obj: InboxMessage) -> bool:
        return obj.read_at is not None


class InboxPageOutSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    unread_count = serializers.IntegerField()
    results = InboxMessageOutSerializer(many=True)


class InboxReadAllInSerializer(serializers.Serializer):
    until = serializers.DateTimeField(
        required=False, help_text="Only mark messages created up to this time (what the user has seen)."
    )


class InboxReadAllOutSerializer(serializers.Serializer):
    marked = serializers.IntegerField()
    unread_count = serializers.IntegerField()


class ProfileSerializer(serializers.Serializer):
    """Input (PATCH) and output of ``/me/profile``; the service validates and normalises."""

    email = serializers.EmailField(read_only=True)
    phone = serializers.CharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=40,
        help_text="With country code, e.g. +4915112345678",
    )
    locale = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=35)
    timezone = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=64)
    email_valid = serializers.BooleanField(read_only=True)
    phone_valid = serializers.BooleanField(read_only=True)


class UnsubscribeOutSerializer(serializers.Serializer):
    unsubscribed = serializers.BooleanField()
    category = serializers.CharField()


class ErrorOutSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField(allow_null=True)
