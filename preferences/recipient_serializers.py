"""Input and output serializers of the identify API (``/api/v1/recipients``) and of inline recipients.

Every input is checked here, field by field, before anything is written: an unknown field, a phone
not in E.164, an unknown time zone, oversized attributes… each comes back as a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from notifications.api_fields import StrictCharField, StrictEmailField, StrictRegexField, StrictURLField

from .identify import PROFILE_FIELDS, USER_FIELDS, RecipientData
from .models import EXTERNAL_ID, EXTERNAL_ID_MAX_LENGTH, validate_e164, validate_timezone
from .serializers import DeviceInSerializer
from .services import _LOCALE_RE

EXTERNAL_ID_HELP = "The recipient's id in your system: 1 to 255 characters without spaces, '/', '?' or '#'."


def _django_validator(validator):
    def run(value: str) -> None:
        try:
            validator(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc

    return run


def external_id_field(**kwargs: Any) -> serializers.RegexField:
    return StrictRegexField(
        EXTERNAL_ID,
        max_length=EXTERNAL_ID_MAX_LENGTH,
        trim_whitespace=False,
        error_messages={"invalid": EXTERNAL_ID_HELP},
        help_text=EXTERNAL_ID_HELP,
        **kwargs,
    )


class RecipientDeviceSerializer(DeviceInSerializer):
    """A push token of a recipient: the same rules as an end user's own device registration."""


class RecipientInSerializer(serializers.Serializer):
    """The fields of a recipient. Left out: unchanged (empty for a new recipient); "" or null: cleared."""

    email = StrictEmailField(required=False, allow_blank=True, allow_null=True, max_length=254)
    first_name = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=150)
    last_name = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=150)
    phone = StrictCharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=20,
        validators=[_django_validator(validate_e164)],
        help_text="E.164, e.g. +4915112345678.",
    )
    locale = StrictRegexField(
        _LOCALE_RE,
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=35,
        error_messages={"invalid": "Enter a language tag such as en or de-CH."},
        help_text="BCP 47 language tag, e.g. en or de-CH: messages and the preference page use it.",
    )
    timezone = StrictCharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=64,
        validators=[_django_validator(validate_timezone)],
        help_text="IANA time zone, e.g. Europe/Berlin (quiet hours).",
    )
    webhook_url = StrictURLField(required=False, allow_blank=True, allow_null=True, max_length=2000)
    attributes = serializers.DictField(
        required=False,
        allow_null=True,
        help_text="Free attributes for campaign audiences, merged into the stored ones; a null value removes a key.",
    )
    devices = RecipientDeviceSerializer(
        many=True, required=False, help_text="Push tokens to register (kept until they fail or move to someone else)."
    )

    def validate_attributes(self, value: dict | None) -> dict | None:
        if value is None:
            return None
        size, limit = len(orjson.dumps(value)), settings.RECIPIENT_MAX_ATTRIBUTES_BYTES
        if size > limit:
            raise serializers.ValidationError(f"Attributes are {size} bytes; the limit is {limit} bytes.")
        return value

    def validate_devices(self, value: list) -> list:
        if len(value) > settings.PREFERENCES_MAX_DEVICES_PER_USER:
            raise serializers.ValidationError(
                f"At most {settings.PREFERENCES_MAX_DEVICES_PER_USER} devices per recipient."
            )
        return value

    def validate(self, attrs: dict) -> dict:
        if isinstance(self.initial_data, dict):
            unknown = sorted(set(self.initial_data) - set(self.fields) - {"id"})
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return attrs

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Send a recipient object."]})
        return super().to_internal_value(data)


class RecipientItemInSerializer(RecipientInSerializer):
    """A recipient with its id: one item of a bulk upsert, or an event's inline recipient."""

    id = external_id_field()


def recipient_data(external_id: str, validated: dict[str, Any]) -> RecipientData:
    """The service's input from a serializer's validated data."""
    fields = {name: validated[name] or "" for name in (*USER_FIELDS, *PROFILE_FIELDS) if name in validated}
    attributes = validated.get("attributes")
    devices = [(d["platform"], d["token"]) for d in validated.get("devices") or []]
    clear_attributes = "attributes" in validated and attributes is None
    return RecipientData(
        external_id=external_id,
        fields=fields,
        attributes=attributes,
        devices=devices,
        clear_attributes=clear_attributes,
    )


def merge_recipient_data(first: RecipientData, then: RecipientData) -> RecipientData:
    """Two upserts of one recipient as one: ``then``'s fields win, attributes merge, devices add up."""
    if then.clear_attributes:
        attributes, clear = then.attributes, True
    elif first.attributes is None and then.attributes is None:
        attributes, clear = None, first.clear_attributes
    else:
        attributes, clear = {**(first.attributes or {}), **(then.attributes or {})}, first.clear_attributes
    return RecipientData(
        external_id=first.external_id,
        fields={**first.fields, **then.fields},
        attributes=attributes,
        devices=list(dict.fromkeys([*first.devices, *then.devices])),
        clear_attributes=clear,
    )


class BulkRecipientsInSerializer(serializers.Serializer):
    recipients = serializers.ListField(
        child=serializers.JSONField(allow_null=True),
        allow_empty=False,
        help_text="Up to RECIPIENTS_BULK_MAX (1,000) recipients; an item that is not a recipient object is "
        "reported invalid in its result.",
    )

    def validate_recipients(self, value: list) -> list:
        limit = settings.RECIPIENTS_BULK_MAX
        if len(value) > limit:
            raise serializers.ValidationError(f"At most {limit} recipients per request.")
        return value


class RecipientDeviceOutSerializer(serializers.Serializer):
    platform = serializers.CharField()
    token = serializers.CharField()


class RecipientOutSerializer(serializers.Serializer):
    id = serializers.CharField(help_text=EXTERNAL_ID_HELP)
    email = serializers.CharField()
    first_name = serializers.CharField()
    last_name = serializers.CharField()
    phone = serializers.CharField()
    locale = serializers.CharField()
    timezone = serializers.CharField()
    webhook_url = serializers.CharField()
    attributes = serializers.DictField()
    devices = RecipientDeviceOutSerializer(many=True, help_text="Active push devices.")
    email_valid = serializers.BooleanField(help_text="False when empty or marked invalid after a hard bounce.")
    phone_valid = serializers.BooleanField()
    created_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField(allow_null=True)


class BulkItemResultSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position in the request's list.")
    id = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=["created", "updated", "invalid"])
    errors = serializers.DictField(required=False, help_text="Field → reasons, for an invalid item.")


class BulkResultOutSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    invalid = serializers.IntegerField()
    results = BulkItemResultSerializer(many=True)
