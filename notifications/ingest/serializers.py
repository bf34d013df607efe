"""Input and output serializers of the ingest API."""

import orjson
from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from notifications.api_fields import StrictCharField, StrictRegexField, StrictSerializer
from notifications.models import NotificationType
from preferences.identify import RecipientData
from preferences.models import EXTERNAL_ID, EXTERNAL_ID_MAX_LENGTH
from preferences.openapi import recipient_id_schema
from preferences.recipient_serializers import RecipientItemInSerializer, merge_recipient_data, recipient_data

NOT_A_RECIPIENT = "Not a recipient id: 1 to 255 characters without spaces, '/', '?' or '#'."


@extend_schema_field(
    {
        "oneOf": [
            {**recipient_id_schema(), "example": "u-42"},
            {
                "type": "object",
                "description": "A recipient object: `id` and the fields of PUT /api/v1/recipients/{id} (the "
                "schema hook `describe_ingest` completes it from that operation's request body).",
                "example": {"id": "u-42", "email": "ana@example.com", "locale": "de-CH"},
            },
        ]
    }
)
class RecipientRefField(serializers.Field):
    """A recipient's external id, or a recipient object (``{"id": …, "email": …}``) to upsert with the event."""

    default_error_messages = {"invalid": NOT_A_RECIPIENT}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._id = serializers.RegexField(
            EXTERNAL_ID,
            max_length=EXTERNAL_ID_MAX_LENGTH,
            trim_whitespace=False,  # an id with spaces around it is refused, as the schema says, not trimmed
            error_messages={"invalid": NOT_A_RECIPIENT},
        )

    def to_internal_value(self, data):
        if isinstance(data, dict):
            item = RecipientItemInSerializer(data=data)
            if not item.is_valid():
                raise serializers.ValidationError(item.errors)
            return recipient_data(item.validated_data["id"], item.validated_data)
        if not isinstance(data, str):
            self.fail("invalid")
        return self._id.run_validation(data)

    def to_representation(self, value):
        return value if isinstance(value, str) else value.external_id


class TargetInSerializer(StrictSerializer):
    """Whom a fanout event reaches instead of listed `recipients`."""

    topic = StrictCharField(
        max_length=100, required=False, help_text="A topic's key: its subscribers (POST /api/v1/topics)."
    )
    audience = serializers.JSONField(
        required=False, help_text="An audience predicate in the campaign predicate language (a JSON object)."
    )
    exclude = serializers.ListField(
        child=StrictRegexField(
            EXTERNAL_ID,
            max_length=EXTERNAL_ID_MAX_LENGTH,
            trim_whitespace=False,
            error_messages={"invalid": NOT_A_RECIPIENT},
        ),
        required=False,
        max_length=1000,
        help_text="Recipient ids to leave out (e.g. the actor), at most 1,000.",
    )

    def validate(self, attrs):
        from campaigns.fanout import target_problems

        errors = target_problems(attrs)
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


class EventInSerializer(StrictSerializer):
    event_id = StrictCharField(
        max_length=200,
        required=False,
        trim_whitespace=False,
        help_text="The producer's id for this event. Re-sending the same id never creates a second event.",
    )
    type = StrictCharField(max_length=100, help_text="A notification type key, e.g. order.shipped.")
    recipients = serializers.ListField(
        child=RecipientRefField(),
        allow_empty=False,
        required=False,
        help_text="The recipients: each your id for them (see PUT /api/v1/recipients/{id}), or a recipient "
        'object with its id and the fields of that endpoint (`{"id": "u-42", "email": "ana@example.com"}`), '
        "created or updated in the same transaction as the event. Give `recipients` or `target`.",
    )
    target = TargetInSerializer(
        required=False,
        help_text='Instead of `recipients`, a fanout: `{"topic": "<key>"}` (its subscribers) or `{"audience": '
        "<predicate>}`, with an optional `exclude` list. Sent in batches like a campaign, with the type's "
        "templates and this event's data.",
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

    def validate_recipients(self, value: list[str | RecipientData]) -> list[str | RecipientData]:
        limit = settings.INGEST_MAX_RECIPIENTS
        if len(value) > limit:
            raise serializers.ValidationError(f"At most {limit} recipients per event; use a campaign for more.")
        unique: dict[str, str | RecipientData] = {}  # drop repeats, keep order; objects of one id merge
        for recipient in value:
            if isinstance(recipient, str):
                unique.setdefault(recipient, recipient)
                continue
            known = unique.get(recipient.external_id)
            unique[recipient.external_id] = (
                recipient if not isinstance(known, RecipientData) else merge_recipient_data(known, recipient)
            )
        return list(unique.values())

    def validate(self, attrs):
        if ("recipients" in attrs) == ("target" in attrs):
            raise serializers.ValidationError({"recipients": ["Give either recipients or a target, not both."]})
        return attrs

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
    duplicate = serializers.BooleanField(
        help_text="True when this event_id had already been accepted (within the retention of accepted events)."
    )


class AcceptedBatchOutSerializer(serializers.Serializer):
    events = AcceptedEventOutSerializer(many=True)
