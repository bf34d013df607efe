"""The preference document as OpenAPI 3.0 schemas (PUT: the document; PATCH: a JSON Merge Patch of it).

Built from the same constants as :data:`preferences.schema.PREFERENCE_DOCUMENT_SCHEMA` and installed by
the drf-spectacular hook :func:`describe_preferences`, so the served schema accepts exactly what the
validator accepts: closed objects, channels and categories by name, security never false nor capped,
times as HH:MM, time zones in the `iana-timezone` format.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from notifications.channels import ALL_CHANNELS
from notifications.models import MANDATORY_CATEGORIES

from .models import EXTERNAL_ID_MAX_LENGTH, EXTERNAL_ID_PATTERN
from .schema import _TIME_PATTERN, CAP_PERIODS, CATEGORIES

PHONE_DESCRIPTION = (
    "A phone number with its country code (format `phone`: valid by libphonenumber), e.g. +4915112345678."
)
LOCALE_PATTERN = r"^([A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*)?$"
TIMEZONE = {"type": "string", "format": "iana-timezone", "description": "An IANA time zone, e.g. Europe/Berlin."}


def _closed(properties: dict[str, Any], *, patch: bool, required: list[str] | None = None) -> dict[str, Any]:
    if patch:  # a merge patch: `null` removes an entry (back to the default)
        properties = {name: {**schema, "nullable": True} for name, schema in properties.items()}
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _flags(category: str, *, patch: bool) -> dict[str, Any]:
    flag = {"type": "boolean", "enum": [True]} if category in MANDATORY_CATEGORIES else {"type": "boolean"}
    return _closed({channel: flag for channel in ALL_CHANNELS}, patch=patch)


def _caps(*, patch: bool) -> dict[str, Any]:
    cap = _closed(
        {"max": {"type": "integer", "minimum": 0}, "per": {"type": "string", "enum": list(CAP_PERIODS)}},
        patch=False,
        required=["max", "per"],
    )
    return _closed({key: cap for key in (*ALL_CHANNELS, "*")}, patch=patch)


def _quiet_hours() -> dict[str, Any]:
    time = {"type": "string", "pattern": _TIME_PATTERN, "description": "HH:MM"}
    schema = _closed(
        {"enabled": {"type": "boolean"}, "start": time, "end": time, "timezone": TIMEZONE},
        patch=False,
        required=["enabled"],
    )
    schema["nullable"] = True
    schema["anyOf"] = [
        {"properties": {"enabled": {"enum": [False]}}},
        {"required": ["start", "end", "timezone"]},
    ]
    schema["description"] = "When enabled: start, end and timezone. start == end is an empty window."
    return schema


def document_schema(*, patch: bool) -> dict[str, Any]:
    uncapped = {"type": "object", "maxProperties": 0, "description": "Security notifications cannot be capped."}
    caps = {c: uncapped if c in MANDATORY_CATEGORIES else _caps(patch=patch) for c in CATEGORIES}
    properties = {
        "global_mute": {"type": "boolean", "description": "Silence everything except security."},
        "categories": _closed({c: _flags(c, patch=patch) for c in CATEGORIES}, patch=patch),
        "quiet_hours": _quiet_hours(),
        "frequency_caps": _closed(caps, patch=patch),
    }
    if patch:
        properties = {
            name: (schema if name == "quiet_hours" else {**schema, "nullable": True})
            for name, schema in properties.items()
        }
    return {"type": "object", "properties": properties, "additionalProperties": False}


def describe_preferences(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the request schemas of the preference document."""
    schemas = result.get("components", {}).get("schemas", {})
    if "PreferenceDocumentRequest" in schemas:
        schemas["PreferenceDocumentRequest"] = document_schema(patch=False)
    if "PatchedPreferenceDocumentRequest" in schemas:
        schemas["PatchedPreferenceDocumentRequest"] = document_schema(patch=True)
    for name in ("ProfileRequest", "PatchedProfileRequest"):
        properties = schemas.get(name, {}).get("properties", {})
        if properties:
            properties["phone"].update(format="phone", description=PHONE_DESCRIPTION)
            properties["locale"]["pattern"] = LOCALE_PATTERN
            properties["timezone"].update(format="iana-timezone")
    return result


def recipient_id_schema() -> dict[str, Any]:
    """A recipient's external id (:data:`preferences.models.EXTERNAL_ID`) as the schema states it."""
    return {"type": "string", "minLength": 1, "maxLength": EXTERNAL_ID_MAX_LENGTH, "pattern": EXTERNAL_ID_PATTERN}


def _text_or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """A field where "" (like null) clears the stored value."""
    return {"nullable": True, "oneOf": [{"type": "string", **schema}, {"type": "string", "maxLength": 0}]}


def describe_recipients(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the identify API's input as its validation reads it (closed
    objects, phones and time zones in their formats, "" clearing a field, ids by their pattern)."""
    schemas = result.get("components", {}).get("schemas", {})
    recipient = schemas.get("RecipientInRequest")
    if recipient is not None:
        properties = recipient["properties"]
        properties["phone"] = {
            **_text_or_empty({"format": "phone", "maxLength": 20}),
            "description": PHONE_DESCRIPTION,
        }
        properties["timezone"] = {
            **_text_or_empty({"format": "iana-timezone", "maxLength": 64}),
            "description": properties["timezone"].get("description", ""),
        }
        properties["locale"] = {
            "type": "string",
            "nullable": True,
            "maxLength": 35,
            "pattern": LOCALE_PATTERN,
            "description": properties["locale"].get("description", ""),
        }
        properties["devices"]["maxItems"] = settings.PREFERENCES_MAX_DEVICES_PER_USER
        recipient["additionalProperties"] = False
    bulk = schemas.get("BulkRecipientsInRequest", {}).get("properties", {}).get("recipients")
    if bulk is not None:
        bulk.update(minItems=1, maxItems=settings.RECIPIENTS_BULK_MAX)
    for device in ("RecipientDeviceRequest", "DeviceInRequest"):
        if device in schemas:
            schemas[device]["additionalProperties"] = False
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v1/recipients/{"):
            continue
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") == "external_id":
                    parameter["schema"] = recipient_id_schema()
    return result
