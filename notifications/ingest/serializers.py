"""Input and output serializers of the ingest API."""

import orjson
from django.conf import settings
from rest_framework import serializers

from notifications.models import NotificationType


class StrictSerializer(serializers.Serializer):
    """Refuses unknown fields (a misspelt `recipient` is a 400, not silently an event without it)."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class EventInSerializer(StrictSerializer):
    event_id = serializers.CharField(
        max_length=200,
        required=False,
        trim_whitespace=False,
        help_text="The producer's id for this event. Re-sending the same id never creates a second event.",
    )
    type = serializers.CharField(max_length=100, help_text="A notification type key, e.g. order.shipped.")
    recipients = serializers.ListField(
        child=serializers.RegexField(r"^[0-9]{1,18}$", max_length=18),
        allow_empty=False,
        help_text="User ids of the recipients.",
    )
    data = serializers.DictField(required=False, default=dict, help_text="Template variables.")
    occurred_at = serializers.DateTimeField(required=False)

    def validate_type(self, value: str) -> str:
        known = self.context.setdefault("known_types", {})
        if value not in known:
            known[value] = NotificationType.objects.filter(key=value, enabled=True).exists()
        if not known[value]:
            raise serializers.ValidationError(f"Unknown or disabled notification type '{value}'.")
        return value

    def validate_recipients(self, value: list[str]) -> list[str]:
        limit = settings.INGEST_MAX_RECIPIENTS
        if len(value) > limit:
            raise serializers.ValidationError(f"At most {limit} recipients per event; use a campaign for more.")
        return list(dict.fromkeys(value))  # drop repeats, keep order

    def validate_data(self, value: dict) -> dict:
        size = len(orjson.dumps(value))
        limit = settings.INGEST_MAX_DATA_BYTES
        if size > limit:
            raise serializers.ValidationError(f"Payload is {size} bytes; the limit is {limit} bytes.")
        return value


class EventBatchInSerializer(StrictSerializer):
    events = EventInSerializer(many=True, allow_empty=False)

    def validate_events(self, value: list) -> list:
        limit = settings.INGEST_MAX_BATCH
        if len(value) > limit:
            raise serializers.ValidationError(f"At most {limit} events per request.")
        return value


class AcceptedEventOutSerializer(serializers.Serializer):
    id = serializers.UUIDField(help_text="The platform's event id.")
    event_id = serializers.CharField(source="producer_event_id")
    accepted_at = serializers.DateTimeField()
    duplicate = serializers.BooleanField(help_text="True when this event_id had already been accepted.")


class AcceptedBatchOutSerializer(serializers.Serializer):
    events = AcceptedEventOutSerializer(many=True)
