"""API input as strict as its schema: text fields that take only JSON strings, objects that refuse
unknown fields.

DRF's text fields turn a number into its string (`"event_id": 215` becomes `"215"`); the OpenAPI
schema says `string`, and a client that sends a number has a bug worth a 400 rather than a guess.
"""

from rest_framework import serializers


class StringOnly:
    """Mixed into a DRF text field: anything but a string is refused with the field's "invalid" error."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(StringOnly, serializers.CharField):
    pass


class StrictRegexField(StringOnly, serializers.RegexField):
    pass


class StrictEmailField(StringOnly, serializers.EmailField):
    pass


class StrictURLField(StringOnly, serializers.URLField):
    pass


class StrictSerializer(serializers.Serializer):
    """Refuses unknown fields (a misspelt `recipient` is a 400, not silently an event without it)."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)
