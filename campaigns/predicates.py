"""Audience predicates: a small JSON language over whitelisted fields and operators, compiled to a Q.

A predicate is a tree of groups (``all``, ``any``, ``not``) and conditions
(``{"field": "attributes.country", "op": "eq", "value": "DE"}``) over :data:`FIELDS` and the
operators of :data:`OPERATORS`; nothing of it reaches SQL as text. See docs/architecture.md,
"Campaigns" (Audience predicates)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import BooleanField, Exists, ExpressionWrapper, F, JSONField, OuterRef, Q, Value
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Coalesce, Lower
from django.db.models.lookups import Exact, In
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from notifications.channels import Channel
from notifications.models import Category
from preferences.models import Device, DevicePlatform, PreferenceDocument

__all__ = [
    "FIELDS",
    "OPERATORS",
    "builder_schema",
    "compile_predicate",
    "contact_available_q",
    "describe_fields",
    "never_null",
    "validate_predicate",
]

MAX_DEPTH = 6
MAX_CONDITIONS = 100
MAX_LIST_VALUES = 1000
MAX_STRING = 200
ATTRIBUTE_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")

STRING, DATETIME, JSON, BOOL = "string", "datetime", "json", "bool"

#: Operators per kind of field.
OPERATORS: dict[str, tuple[str, ...]] = {
    STRING: ("eq", "ne", "in", "not_in", "contains", "startswith", "endswith", "exists"),
    DATETIME: ("before", "after", "within_days", "older_than_days", "exists"),
    JSON: ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "contains", "exists"),
    BOOL: ("is",),
}

_PROFILE = "recipient_profile"


@dataclass(frozen=True)
class FieldSpec:
    kind: str
    label: str
    path: str = ""  # ORM path on the user model (string and datetime fields)


#: Plain fields. Patterned fields (attributes.<key>, opted_out:…, …) are resolved by :func:`_resolve`.
FIELDS: dict[str, FieldSpec] = {
    "user.email": FieldSpec(STRING, "User e-mail address", "email"),
    "user.first_name": FieldSpec(STRING, "User first name", "first_name"),
    "user.last_name": FieldSpec(STRING, "User last name", "last_name"),
    "user.date_joined": FieldSpec(DATETIME, "When the user joined", "date_joined"),
    "user.last_login": FieldSpec(DATETIME, "Last login", "last_login"),
    "recipient.id": FieldSpec(STRING, "The producer's external id of the recipient", f"{_PROFILE}__external_id"),
    "profile.locale": FieldSpec(STRING, "Locale, e.g. de-ch", f"{_PROFILE}__locale"),
    "profile.timezone": FieldSpec(STRING, "IANA time zone", f"{_PROFILE}__timezone"),
    "muted": FieldSpec(BOOL, "Globally muted (all non-security notifications off)"),
    "has_device": FieldSpec(BOOL, "Has at least one active push device"),
}

PATTERNS: tuple[tuple[str, str, str], ...] = (
    ("attributes.<key>", JSON, "A recipient attribute (JSON value), e.g. attributes.country"),
    ("opted_out:<category>:<channel>", BOOL, "Explicitly opted out of a category on a channel"),
    ("opted_in:<category>:<channel>", BOOL, "Explicitly opted in to a category on a channel"),
    ("reachable:<channel>", BOOL, "Has a valid contact point for the channel"),
    ("has_device:<platform>", BOOL, "Has an active push device of the platform (fcm, apns)"),
)


def describe_fields() -> list[tuple[str, str, str]]:
    """(field, operators, description) rows for the admin's reference table."""
    rows = [(name, ", ".join(OPERATORS[spec.kind]), spec.label) for name, spec in FIELDS.items()]
    rows += [(pattern, ", ".join(OPERATORS[kind]), label) for pattern, kind, label in PATTERNS]
    return rows


#: Choices of the <placeholders> of PATTERNS; a placeholder without choices (<key>) is free text.
PATTERN_CHOICES: dict[str, type[models.TextChoices]] = {
    "category": Category,
    "channel": Channel,
    "platform": DevicePlatform,
}


def builder_schema() -> dict[str, Any]:
    """The whitelist as the admin's audience builder reads it (JSON): operators per kind, plain fields
    and patterned fields with the choices of their placeholders. The builder offers only these; the
    server still validates every predicate (:func:`validate_predicate`)."""
    fields = [{"name": name, "kind": spec.kind, "label": spec.label} for name, spec in FIELDS.items()]
    patterns = []
    for pattern, kind, label in PATTERNS:
        params = []
        for name in re.findall(r"<(\w+)>", pattern):
            choices = PATTERN_CHOICES.get(name)
            params.append(
                {
                    "name": name,
                    "choices": [[value, str(text)] for value, text in choices.choices] if choices else None,
                    "regex": ATTRIBUTE_KEY.pattern if name == "key" else None,
                }
            )
        patterns.append({"pattern": pattern, "kind": kind, "label": label, "params": params})
    return {"operators": {kind: list(ops) for kind, ops in OPERATORS.items()}, "fields": fields, "patterns": patterns}


class _Errors:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.conditions = 0

    def add(self, path: str, message: str) -> None:
        self.messages.append(f"{path or '(root)'}: {message}")


def validate_predicate(predicate: Any) -> None:
    """Raise ValidationError (messages prefixed with the JSON path) unless the predicate is valid."""
    compile_predicate(predicate)


def compile_predicate(predicate: Any, *, now: dt.datetime | None = None) -> Q:
    """Compile a predicate to a Q on the user model. ``now`` anchors relative dates (within_days):
    pass the launch's start time so every page of a launch sees the same audience."""
    errors = _Errors()
    q = _node(predicate, "", 0, errors, now or timezone.now())
    if errors.messages:
        raise ValidationError(errors.messages, code="invalid_predicate")
    assert q is not None  # noqa: S101 - narrows the type: _node returns None only with errors
    return q


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _node(node: Any, path: str, depth: int, errors: _Errors, now: dt.datetime) -> Q | None:
    if depth > MAX_DEPTH:
        errors.add(path, f"nested deeper than {MAX_DEPTH} levels")
        return None
    if not isinstance(node, dict):
        errors.add(path, "must be an object: a group ({'all': [...]}, {'any': [...]}, {'not': {...}}) or a condition")
        return None
    groups = [k for k in ("all", "any", "not") if k in node]
    if groups:
        if len(node) != 1:
            errors.add(path, f"a group has exactly one key ('{groups[0]}'); found {sorted(node)}")
            return None
        key = groups[0]
        if key == "not":
            inner = _node(node["not"], _join(path, "not"), depth + 1, errors, now)
            return None if inner is None else ~inner
        items = node[key]
        if not isinstance(items, list):
            errors.add(_join(path, key), "must be a list of conditions or groups")
            return None
        parts = [_node(item, _join(_join(path, key), i), depth + 1, errors, now) for i, item in enumerate(items)]
        if any(p is None for p in parts):
            return None
        if not parts:
            return Q() if key == "all" else Q(pk__in=[])
        combined = parts[0]
        for part in parts[1:]:
            combined = (combined & part) if key == "all" else (combined | part)
        return combined
    return _condition(node, path, errors, now)


def _condition(node: dict, path: str, errors: _Errors, now: dt.datetime) -> Q | None:
    errors.conditions += 1
    if errors.conditions > MAX_CONDITIONS:
        if errors.conditions == MAX_CONDITIONS + 1:
            errors.add(path, f"more than {MAX_CONDITIONS} conditions")
        return None
    unknown = set(node) - {"field", "op", "value"}
    if unknown or "field" not in node or "op" not in node:
        errors.add(
            path,
            "a condition is {'field': …, 'op': …, 'value': …}"
            + (f"; unknown keys {sorted(unknown)}" if unknown else ""),
        )
        return None
    field, op = node["field"], node["op"]
    if not isinstance(field, str):
        errors.add(_join(path, "field"), "must be a string")
        return None
    resolved = _resolve(field)
    if isinstance(resolved, str):
        errors.add(_join(path, "field"), resolved)
        return None
    kind, build = resolved
    if op not in OPERATORS[kind]:
        errors.add(
            _join(path, "op"), f"{op!r} is not an operator of {field} (use one of: {', '.join(OPERATORS[kind])})"
        )
        return None
    if "value" not in node:
        errors.add(path, "missing 'value'")
        return None
    value, problem = _check_value(kind, op, node["value"], now)
    if problem:
        errors.add(_join(path, "value"), problem)
        return None
    return never_null(build(op, value))


def never_null(q: Q) -> Q:
    """COALESCE(condition, false): a missing profile or attribute makes a condition false, not NULL,
    so NOT and OR keep two-valued logic."""
    return Q(Coalesce(ExpressionWrapper(q, output_field=BooleanField()), Value(False)))


# -- fields ------------------------------------------------------------------------------------------
Builder = Callable[[str, Any], Q]


def _resolve(field: str) -> tuple[str, Builder] | str:
    """(kind, builder) for a field name, or an error message."""
    spec = FIELDS.get(field)
    if spec is not None:
        if spec.kind == STRING:
            return STRING, lambda op, v, p=spec.path: _string_q(p, op, v)
        if spec.kind == DATETIME:
            return DATETIME, lambda op, v, p=spec.path: _datetime_q(p, op, v)
        if field == "muted":
            return BOOL, lambda op, v: _bool(_documents_q(Q(document__global_mute=True)), v)
        if field == "has_device":
            return BOOL, lambda op, v: _bool(Q(Exists(Device.objects.filter(user=OuterRef("pk"), active=True))), v)
    if field.startswith("attributes."):
        key = field.removeprefix("attributes.")
        if not ATTRIBUTE_KEY.match(key):
            return "an attribute key is a letter followed by up to 63 letters, digits, '_' or '-'"
        return JSON, lambda op, v: _json_q(key, op, v)
    if field.startswith(("opted_out:", "opted_in:")):
        parts = field.split(":")
        if len(parts) != 3:
            return f"use {parts[0]}:<category>:<channel>, e.g. {parts[0]}:marketing:email"
        kind, category, channel = parts
        if category not in Category.values:
            return f"unknown category {category!r} (one of: {', '.join(Category.values)})"
        if channel not in Channel.values:
            return f"unknown channel {channel!r} (one of: {', '.join(Channel.values)})"
        flag = kind == "opted_in"
        setting = {f"document__categories__{category}__{channel}": flag}
        return BOOL, lambda op, v: _bool(_documents_q(Q(**setting)), v)
    if field.startswith("reachable:"):
        channel = field.removeprefix("reachable:")
        if channel not in Channel.values:
            return f"unknown channel {channel!r} (one of: {', '.join(Channel.values)})"
        return BOOL, lambda op, v: _bool(contact_available_q(channel), v)
    if field.startswith("has_device:"):
        platform = field.removeprefix("has_device:")
        if platform not in DevicePlatform.values:
            return f"unknown platform {platform!r} (one of: {', '.join(DevicePlatform.values)})"
        devices = Device.objects.filter(user=OuterRef("pk"), active=True, platform=platform)
        return BOOL, lambda op, v: _bool(Q(Exists(devices)), v)
    return f"unknown field {field!r} (see the field reference: user.*, profile.*, attributes.<key>, muted, …)"


def _bool(q: Q, value: bool) -> Q:
    return q if value else ~q


def _documents_q(condition: Q) -> Q:
    return Q(Exists(PreferenceDocument.objects.filter(condition, user=OuterRef("pk"))))


def _string_q(path: str, op: str, value: Any) -> Q:
    if op == "exists":
        return _bool(Q(**{f"{path}__gt": ""}), value)
    if op in ("ne", "not_in"):
        return ~never_null(_string_q(path, "eq" if op == "ne" else "in", value))
    if op == "in":  # case-insensitive like eq (the values were lower-cased by _check_value)
        return Q(In(Lower(path), value))
    lookup = {"eq": "iexact", "contains": "icontains", "startswith": "istartswith", "endswith": "iendswith"}[op]
    return Q(**{f"{path}__{lookup}": value})


def _datetime_q(path: str, op: str, value: Any) -> Q:
    if op == "exists":
        return _bool(Q(**{f"{path}__isnull": False}), value)
    if op in ("before", "older_than_days"):
        return Q(**{f"{path}__lt": value})
    return Q(**{f"{path}__gte": value})


def _json_q(key: str, op: str, value: Any) -> Q:
    attribute = KeyTransform(key, f"{_PROFILE}__attributes")
    if op == "exists":
        return _bool(Q(attribute.get_lookup("isnull")(attribute, False)), value)
    if op in ("ne", "not_in"):
        return ~never_null(_json_q(key, "eq" if op == "ne" else "in", value))
    if op == "contains":
        text = KeyTextTransform(key, f"{_PROFILE}__attributes")
        return Q(text.get_lookup("icontains")(text, value))
    if op == "in":
        return Q(attribute.get_lookup("in")(attribute, [_json(v) for v in value]))
    lookup = {"eq": "exact", "lt": "lt", "lte": "lte", "gt": "gt", "gte": "gte"}[op]
    return Q(attribute.get_lookup(lookup)(attribute, _json(value)))


def _json(value: Any) -> Value:
    """A bound jsonb parameter: attribute values compare as JSON (the string "1" is not the number 1)."""
    return Value(value, output_field=JSONField())


# -- values ------------------------------------------------------------------------------------------
def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and not (isinstance(value, str) and len(value) > MAX_STRING)


def _check_value(kind: str, op: str, value: Any, now: dt.datetime) -> tuple[Any, str | None]:
    if kind == BOOL or op == "exists":
        return (value, None) if isinstance(value, bool) else (None, "must be true or false")
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            return None, "must be a non-empty list"
        if len(value) > MAX_LIST_VALUES:
            return None, f"at most {MAX_LIST_VALUES} values"
        if kind == STRING:
            if not all(isinstance(v, str) and len(v) <= MAX_STRING for v in value):
                return None, f"must be a list of strings (each at most {MAX_STRING} characters)"
            return [v.lower() for v in value], None
        if not all(_scalar(v) for v in value):
            return None, "must be a list of strings, numbers or booleans"
        return value, None
    if kind == STRING:
        if not isinstance(value, str) or len(value) > MAX_STRING:
            return None, f"must be a string of at most {MAX_STRING} characters"
        if op in ("contains", "startswith", "endswith") and not value:
            return None, "must not be empty"
        return value, None
    if kind == DATETIME:
        if op in ("within_days", "older_than_days"):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 36500:
                return None, "must be a whole number of days between 0 and 36500"
            return now - dt.timedelta(days=value), None
        parsed = _parse_when(value)
        if parsed is None:
            return None, "must be an ISO date or date-time, e.g. 2026-01-31 or 2026-01-31T08:00:00+01:00"
        return parsed, None
    # JSON attribute values
    if op == "contains":
        if not isinstance(value, str) or not value or len(value) > MAX_STRING:
            return None, f"must be a non-empty string of at most {MAX_STRING} characters"
        return value, None
    if op in ("lt", "lte", "gt", "gte"):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return None, "must be a number or a string"
        return value, None
    if not _scalar(value):
        return None, f"must be a string (at most {MAX_STRING} characters), a number or a boolean"
    return value, None


def _parse_when(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = parse_datetime(value)
        if parsed is None:
            day = parse_date(value)
            if day is None:
                return None
            parsed = dt.datetime.combine(day, dt.time.min)
    except ValueError:
        return None
    if timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


# -- contact points as SQL -----------------------------------------------------------------------------
def contact_available_q(channel: str) -> Q:
    """A Q on the user model: the user has a valid contact point for ``channel``. Mirrors
    :func:`preferences.selectors.contact_points_for_users` (invalid marks, active devices)."""
    profile = _PROFILE
    if channel == Channel.EMAIL:
        bounced = Q(**{f"{profile}__email_invalid_at__isnull": False}) & (
            Q(**{f"{profile}__email_invalid_address": ""})
            | Q(Exact(Lower(f"{profile}__email_invalid_address"), Lower(F("email"))))
        )
        return Q(email__gt="") & ~never_null(bounced)
    if channel == Channel.SMS:
        return Q(**{f"{profile}__phone__gt": "", f"{profile}__phone_invalid_at__isnull": True})
    if channel == Channel.WEBHOOK:
        return Q(**{f"{profile}__webhook_url__gt": "", f"{profile}__webhook_invalid_at__isnull": True})
    if channel == Channel.PUSH:
        return Q(Exists(Device.objects.filter(user=OuterRef("pk"), active=True)))
    if channel == Channel.INAPP:
        return Q()
    raise ValueError(f"unknown channel {channel!r}")
