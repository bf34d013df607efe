"""A lean check of a recipient object for the plain, valid case; anything else goes to the serializers.

DRF builds and deep-copies a serializer's fields per instance, too slow for thousands of recipients
a second in a bulk upsert. ``fast_recipient`` accepts only what
``RecipientItemInSerializer`` accepts and gives the same data (a property test compares the two); it
gives up (None) on anything unusual, and the serializer then decides, with its field-level errors.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from .identify import PROFILE_FIELDS, USER_FIELDS, RecipientData
from .models import EXTERNAL_ID, DevicePlatform, _available_timezones, validate_e164
from .serializers import DEVICE_TOKEN_PATTERN
from .services import _LOCALE_RE

__all__ = ["fast_recipient"]

_ALLOWED = frozenset({"id", *USER_FIELDS, *PROFILE_FIELDS, "attributes", "devices"})
_LIMITS = {"email": 254, "first_name": 150, "last_name": 150, "phone": 20, "locale": 35, "timezone": 64}
_PLATFORMS = frozenset(DevicePlatform.values)
_DEVICE_TOKEN = re.compile(DEVICE_TOKEN_PATTERN)
_NUL_OR_SURROGATE = re.compile(r"[\x00\ud800-\udfff]")
#: Django's e-mail validator's own patterns, compiled here: its lazy regex objects cost a few µs a call.
_EMAIL_USER = re.compile(validate_email.user_regex.pattern, validate_email.user_regex.flags)


def _plain(value: str, limit: int) -> bool:
    """What DRF's CharField keeps unchanged and accepts: trimmed, no NUL, no lone surrogates."""
    return len(value) <= limit and value == value.strip() and _NUL_OR_SURROGATE.search(value) is None


def _email_ok(value: str) -> bool:
    """``validate_email`` (Django's ``EmailValidator``, as DRF's EmailField runs it) as a predicate, with
    the verdict on the domain part remembered: a bulk's addresses share a few domains."""
    if "@" not in value or len(value) > 320:
        return False
    user_part, domain_part = value.rsplit("@", 1)
    if _EMAIL_USER.match(user_part) is None:
        return False
    return domain_part in validate_email.domain_allowlist or _email_domain_ok(domain_part)


@lru_cache(maxsize=4096)
def _email_domain_ok(domain_part: str) -> bool:
    return validate_email.validate_domain_part(domain_part)


def _field_ok(name: str, value: str) -> bool:
    if not value:
        return name != "webhook_url"
    if not _plain(value, _LIMITS[name]):
        return False
    if name == "email":
        return _email_ok(value)
    if name == "phone":
        try:
            validate_e164(value)
        except ValidationError:
            return False
    if name == "locale":
        return _LOCALE_RE.match(value) is not None
    if name == "timezone":
        return value in _available_timezones()
    return True


def fast_recipient(item: Any) -> RecipientData | None:
    """The recipient of a plainly valid item (with its ``id``), or None (the serializer decides)."""
    if not isinstance(item, dict) or not item.keys() <= _ALLOWED or "webhook_url" in item:
        return None
    external_id = item.get("id")
    if not isinstance(external_id, str) or EXTERNAL_ID.fullmatch(external_id) is None:
        return None
    fields: dict[str, str] = {}
    for name in (*USER_FIELDS, *PROFILE_FIELDS):
        if name not in item:
            continue
        value = item[name]
        if value is None:
            value = ""
        if not isinstance(value, str) or not _field_ok(name, value):
            return None
        fields[name] = value
    attributes = item.get("attributes")
    if attributes is not None and not (
        isinstance(attributes, dict)
        and all(isinstance(key, str) for key in attributes)
        and len(orjson.dumps(attributes)) <= settings.RECIPIENT_MAX_ATTRIBUTES_BYTES
    ):
        return None
    devices = item.get("devices", [])
    if not isinstance(devices, list) or len(devices) > settings.PREFERENCES_MAX_DEVICES_PER_USER:
        return None
    pairs = []
    for device in devices:
        if not (isinstance(device, dict) and device.keys() == {"platform", "token"}):
            return None
        platform, token = device["platform"], device["token"]
        if (
            not isinstance(platform, str)
            or platform not in _PLATFORMS
            or not isinstance(token, str)
            or len(token) > 512
            or not _DEVICE_TOKEN.match(token)
        ):
            return None
        pairs.append((platform, token))
    return RecipientData(
        external_id=external_id,
        fields=fields,
        attributes=attributes,
        devices=pairs,
        clear_attributes="attributes" in item and attributes is None,
    )
