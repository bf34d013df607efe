"""Input and output serializers of the topics API (producer and end user)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from notifications.api_fields import StrictSerializer
from preferences.models import EXTERNAL_ID
from preferences.openapi import recipient_id_schema
from preferences.recipient_serializers import EXTERNAL_ID_HELP

from .models import TOPIC_KEY_HELP, TOPIC_KEY_PATTERN
from .services import MAX_IDS_PER_REQUEST

NEXT_CURSOR = "Pass as `cursor` for the next page; null at the end."


class StringField(serializers.CharField):
    """A JSON string only (DRF's CharField would turn a number into one)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class JsonBooleanField(serializers.BooleanField):
    """``true`` or ``false`` only (DRF's BooleanField also takes "yes", 1, "on"...)."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


@extend_schema_field({"type": "string", "pattern": TOPIC_KEY_PATTERN, "maxLength": 100, "description": TOPIC_KEY_HELP})
class TopicKeyField(serializers.RegexField):
    """A topic key, matched whole (Python's ``$`` would also accept a trailing newline); a string only."""

    def __init__(self, **kwargs):
        super().__init__(r"\A" + TOPIC_KEY_PATTERN[1:-1] + r"\Z", max_length=100, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class TopicInSerializer(StrictSerializer):
    key = TopicKeyField(help_text=TOPIC_KEY_HELP)
    name = StringField(max_length=200, trim_whitespace=False)
    description = StringField(required=False, allow_blank=True, default="", trim_whitespace=False)
    user_can_follow = JsonBooleanField(
        required=False, default=False, help_text="End users may follow and unfollow it themselves."
    )


class TopicOutSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    user_can_follow = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class TopicPageOutSerializer(serializers.Serializer):
    results = TopicOutSerializer(many=True)
    next_cursor = serializers.CharField(
        allow_null=True, help_text="Pass as `cursor` for the next page; null at the end."
    )


@extend_schema_field(
    {
        "type": "array",
        "items": recipient_id_schema(),
        "minItems": 1,
        "maxItems": MAX_IDS_PER_REQUEST,
        "uniqueItems": False,
    }
)
class RecipientIdListField(serializers.ListField):
    """Up to MAX_IDS_PER_REQUEST recipient ids, checked in one pass (no field object per item)."""

    def __init__(self, **kwargs):
        super().__init__(
            child=serializers.CharField(),
            allow_empty=False,
            max_length=MAX_IDS_PER_REQUEST,
            help_text=f"Your ids for the recipients (up to {MAX_IDS_PER_REQUEST:,}). {EXTERNAL_ID_HELP}",
            **kwargs,
        )

    def to_internal_value(self, data):
        if not isinstance(data, list):
            self.fail("not_a_list", input_type=type(data).__name__)
        if not data:
            self.fail("empty")
        if len(data) > MAX_IDS_PER_REQUEST:
            self.fail("max_length", max_length=MAX_IDS_PER_REQUEST)
        errors = {
            index: [EXTERNAL_ID_HELP]
            for index, item in enumerate(data)
            if not isinstance(item, str) or EXTERNAL_ID.fullmatch(item) is None
        }
        if errors:
            raise serializers.ValidationError(errors)
        return list(dict.fromkeys(data))


class SubscribersInSerializer(StrictSerializer):
    recipients = RecipientIdListField()


class SubscriberChangeOutSerializer(serializers.Serializer):
    changed = serializers.IntegerField(help_text="Subscriptions added (or removed).")
    unchanged = serializers.IntegerField(help_text="Recipients that were subscribed already (or were not subscribed).")
    unknown = serializers.ListField(
        child=serializers.CharField(), help_text="Ids that name no recipient (identify them first); nothing stored."
    )


class SubscriberPageOutSerializer(serializers.Serializer):
    recipients = serializers.ListField(child=serializers.CharField(), help_text="Recipient ids, in a stable order.")
    next_cursor = serializers.CharField(
        allow_null=True, help_text="Pass as `cursor` for the next page; null at the end."
    )


class MyTopicOutSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    user_can_follow = serializers.BooleanField(help_text="You may follow and unfollow it yourself.")
    following = serializers.BooleanField()
