"""The JSON Schema of a preference document and its validation into path-keyed error messages
(``{"categories.marketing.push": ["must be boolean"]}``). The document's shape: docs/architecture.md,
"Preferences" (Documents)."""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError as SchemaError

from notifications.channels import ALL_CHANNELS
from notifications.models import MANDATORY_CATEGORIES, Category

__all__ = [
    "CAP_PERIODS",
    "CATEGORIES",
    "MANDATORY_OPT_OUT_MESSAGE",
    "PREFERENCE_DOCUMENT_SCHEMA",
    "unknown_patch_keys",
    "validate_document",
]

CATEGORIES: tuple[str, ...] = tuple(Category.values)
CAP_PERIODS: tuple[str, ...] = ("hour", "day", "week")
MANDATORY_OPT_OUT_MESSAGE = "security notifications cannot be turned off"
MANDATORY_CAP_MESSAGE = "security notifications cannot be capped"

_TIME_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"

_format_checker = FormatChecker(formats=())


@_format_checker.checks("iana-timezone")
def _is_iana_timezone(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the "type" keyword reports it
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _closed_object(properties: Mapping[str, Any], unknown: str) -> dict[str, Any]:
    return {"type": "object", "properties": dict(properties), "additionalProperties": False, "x-unknown": unknown}


_CHANNEL_FLAGS = _closed_object({channel: {"type": "boolean"} for channel in ALL_CHANNELS}, "unknown channel")
_CAP = {
    "type": "object",
    "properties": {
        "max": {"type": "integer", "minimum": 0},
        "per": {"enum": list(CAP_PERIODS), "x-message": f"must be one of {', '.join(CAP_PERIODS)}"},
    },
    "required": ["max", "per"],
    "additionalProperties": False,
    "x-unknown": "unknown field",
}
_CATEGORY_CAPS = _closed_object({key: _CAP for key in (*ALL_CHANNELS, "*")}, "unknown channel (use a channel or '*')")

PREFERENCE_DOCUMENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Preference document",
    "type": "object",
    "additionalProperties": False,
    "x-unknown": "unknown field",
    "properties": {
        "global_mute": {"type": "boolean"},
        "categories": _closed_object({category: _CHANNEL_FLAGS for category in CATEGORIES}, "unknown category"),
        "quiet_hours": {
            "type": ["object", "null"],
            "properties": {
                "enabled": {"type": "boolean"},
                "start": {"type": "string", "pattern": _TIME_PATTERN, "x-message": "must be a time HH:MM"},
                "end": {"type": "string", "pattern": _TIME_PATTERN, "x-message": "must be a time HH:MM"},
                "timezone": {
                    "type": "string",
                    "format": "iana-timezone",
                    "x-message": "must be an IANA time zone such as Europe/Berlin",
                },
            },
            "required": ["enabled"],
            "additionalProperties": False,
            "x-unknown": "unknown field",
            "if": {"properties": {"enabled": {"const": True}}},
            "then": {"required": ["start", "end", "timezone"]},
        },
        "frequency_caps": _closed_object({category: _CATEGORY_CAPS for category in CATEGORIES}, "unknown category"),
    },
}

Draft202012Validator.check_schema(PREFERENCE_DOCUMENT_SCHEMA)
_validator = Draft202012Validator(PREFERENCE_DOCUMENT_SCHEMA, format_checker=_format_checker)

_TYPE_NAMES = {
    "boolean": "must be boolean",
    "integer": "must be an integer",
    "string": "must be a string",
    "object": "must be an object",
}


def _path(parts: Any) -> str:
    return ".".join(str(part) for part in parts)


def _add(errors: dict[str, list[str]], key: str, message: str) -> None:
    key = key or "non_field_errors"
    messages = errors.setdefault(key, [])
    if message not in messages:
        messages.append(message)


def _type_message(expected: str | list[str]) -> str:
    if isinstance(expected, list):
        names = [n for n in expected if n != "null"]
        base = _TYPE_NAMES.get(names[0], f"must be {names[0]}") if len(names) == 1 else f"must be one of {expected}"
        return f"{base} or null" if "null" in expected else base
    return _TYPE_NAMES.get(expected, f"must be {expected}")


def _collect(error: SchemaError, errors: dict[str, list[str]]) -> None:
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties":
        known = set(schema.get("properties", {}))
        for extra in sorted(set(error.instance) - known):
            _add(errors, _path([*path, extra]), schema.get("x-unknown", "unknown field"))
    elif error.validator == "required":
        for missing in error.validator_value:
            if isinstance(error.instance, Mapping) and missing not in error.instance:
                _add(errors, _path([*path, missing]), "this field is required")
    elif error.validator == "type":
        _add(errors, _path(path), _type_message(error.validator_value))
    elif error.validator == "minimum":
        _add(errors, _path(path), f"must be >= {error.validator_value}")
    elif "x-message" in schema:
        _add(errors, _path(path), schema["x-message"])
    else:
        _add(errors, _path(path), error.message)


def _semantic_errors(document: Mapping[str, Any], errors: dict[str, list[str]]) -> None:
    categories = document.get("categories")
    if isinstance(categories, Mapping):
        for category in MANDATORY_CATEGORIES:
            flags = categories.get(category)
            if isinstance(flags, Mapping):
                for channel, value in flags.items():
                    if value is False:
                        _add(errors, f"categories.{category}.{channel}", MANDATORY_OPT_OUT_MESSAGE)
    caps = document.get("frequency_caps")
    if isinstance(caps, Mapping):
        for category in MANDATORY_CATEGORIES:
            if caps.get(category):
                _add(errors, f"frequency_caps.{category}", MANDATORY_CAP_MESSAGE)


def unknown_patch_keys(patch: Any, schema: Mapping[str, Any] = PREFERENCE_DOCUMENT_SCHEMA, path=()) -> dict:
    """Path-keyed errors for the names a merge patch uses that the document never has (a patch that
    removes an unknown key would otherwise be a silent no-op)."""
    errors: dict[str, list[str]] = {}
    properties = schema.get("properties")
    if not isinstance(patch, Mapping) or not isinstance(properties, Mapping):
        return errors
    for key, value in patch.items():
        if key not in properties:
            if schema.get("additionalProperties") is False:
                _add(errors, _path([*path, key]), schema.get("x-unknown", "unknown field"))
            continue
        errors.update(unknown_patch_keys(value, properties[key], (*path, key)))
    return errors


def validate_document(document: Any) -> dict[str, list[str]]:
    """Return path-keyed error messages for ``document``; an empty dict means it is valid."""
    errors: dict[str, list[str]] = {}
    for error in sorted(_validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path]):
        _collect(error, errors)
    if isinstance(document, Mapping):
        _semantic_errors(document, errors)
    return errors
