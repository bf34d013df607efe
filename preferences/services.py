"""Write-side services of the preferences app: profiles, devices, contact points, preferences, inbox.

All functions are keyword-only, run in a database transaction, and raise
:class:`django.core.exceptions.ValidationError` with a field-keyed dict for bad input (the API turns
it into a 400 with the same keys). Cache updates happen on commit (see :mod:`preferences.cache`).
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
import phonenumbers
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import connection, transaction
from django.utils import timezone as dj_timezone

from notifications.channels import ALL_CHANNELS, Channel
from notifications.models import MANDATORY_CATEGORIES, Category

from .cache import publish_state
from .models import Device, DevicePlatform, InboxMessage, PreferenceDocument, RecipientProfile, validate_timezone
from .schema import unknown_patch_keys, validate_document
from .state import PreferenceState

__all__ = [
    "UNSET",
    "PreferenceVersionConflict",
    "contact_point_invalidate",
    "device_register",
    "device_unregister",
    "devices_set_active",
    "inbox_mark_all_read",
    "inbox_mark_read",
    "inbox_write_many",
    "merge_patch",
    "preferences_delete",
    "preferences_opt_out_category",
    "preferences_update",
    "profile_get_or_create",
    "profile_update",
]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: Default of optional keyword arguments meaning "leave this field alone" (None/"" clear it).
UNSET: Final = _Unset()

_LOCALE_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*\Z")


class PreferenceVersionConflict(Exception):
    """The document changed since the version the caller based its write on (If-Match)."""

    def __init__(self, current_version: int) -> None:
        super().__init__(f"the preferences are at version {current_version}")
        self.current_version = current_version


# --- profile ---------------------------------------------------------------------------------


def profile_get_or_create(*, user: AbstractBaseUser) -> RecipientProfile:
    profile, _created = RecipientProfile.objects.get_or_create(user=user)
    return profile


def normalize_phone(value: str) -> str:
    """Parse a phone number written with its country code and return it in E.164."""
    try:
        parsed = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValidationError({"phone": ["Enter a phone number with its country code, e.g. +4915112345678."]}) from exc
    if not phonenumbers.is_valid_number(parsed):
        raise ValidationError({"phone": ["This is not a valid phone number."]})
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def profile_update(
    *,
    user: AbstractBaseUser,
    phone: str | _Unset | None = UNSET,
    locale: str | _Unset | None = UNSET,
    timezone: str | _Unset | None = UNSET,
    attributes: Mapping[str, Any] | _Unset | None = UNSET,
    webhook_url: str | _Unset | None = UNSET,
) -> RecipientProfile:
    """Change the given fields of the user's profile (created on first use).

    The phone is normalised to E.164; a changed phone or webhook URL clears its "invalid" mark.
    """
    errors: dict[str, list[str]] = {}
    changes: dict[str, Any] = {}
    if not isinstance(phone, _Unset):
        try:
            changes["phone"] = normalize_phone(phone) if phone else ""
        except ValidationError as exc:
            errors.update(exc.message_dict)
    if not isinstance(locale, _Unset):
        if locale and not _LOCALE_RE.match(locale):
            errors["locale"] = ["Enter a language tag such as en or de-CH."]
        changes["locale"] = locale or ""
    if not isinstance(timezone, _Unset):
        try:
            validate_timezone(timezone or "")
        except ValidationError as exc:
            errors["timezone"] = exc.messages
        changes["timezone"] = timezone or ""
    if not isinstance(attributes, _Unset):
        if attributes is not None and not isinstance(attributes, Mapping):
            errors["attributes"] = ["Must be an object."]
        changes["attributes"] = dict(attributes or {})
    if not isinstance(webhook_url, _Unset):
        if webhook_url:
            try:
                URLValidator(schemes=["http", "https"])(webhook_url)
            except ValidationError:
                errors["webhook_url"] = ["Enter an http(s) URL."]
        changes["webhook_url"] = webhook_url or ""
    if errors:
        raise ValidationError(errors)

    with transaction.atomic():
        RecipientProfile.objects.get_or_create(user=user)
        profile = RecipientProfile.objects.select_for_update().get(user=user)
        if "phone" in changes and changes["phone"] != profile.phone:
            profile.phone_invalid_at, profile.phone_invalid_reason = None, ""
        if "webhook_url" in changes and changes["webhook_url"] != profile.webhook_url:
            profile.webhook_invalid_at, profile.webhook_invalid_reason = None, ""
        for name, value in changes.items():
            setattr(profile, name, value)
        profile.save()
    return profile


# --- devices ---------------------------------------------------------------------------------


def device_register(*, user: AbstractBaseUser, platform: str, token: str) -> Device:
    """Register (or refresh) a push token for ``user``.

    A token is unique per platform: registering a token another user holds moves it to ``user``
    (the device changed hands or accounts); an inactive token is reactivated. Beyond
    ``PREFERENCES_MAX_DEVICES_PER_USER`` (default 20) active devices, the least recently seen
    ones are deactivated.
    """
    if platform not in DevicePlatform.values:
        raise ValidationError({"platform": [f"Must be one of {', '.join(DevicePlatform.values)}."]})
    token = (token or "").strip()
    if not token or len(token) > Device._meta.get_field("token").max_length:
        raise ValidationError({"token": ["Enter a push token of at most 512 characters."]})
    now = dj_timezone.now()
    with transaction.atomic():
        device, _created = Device.objects.update_or_create(
            platform=platform,
            token=token,
            defaults={
                "user": user,
                "active": True,
                "last_seen_at": now,
                "deactivated_at": None,
                "deactivation_reason": "",
            },
        )
        limit = max(1, int(getattr(settings, "PREFERENCES_MAX_DEVICES_PER_USER", 20)))
        surplus = list(
            Device.objects.filter(user=user, active=True)
            .exclude(pk=device.pk)
            .order_by("-last_seen_at", "-id")
            .values_list("pk", flat=True)[limit - 1 :]
        )
        if surplus:
            Device.objects.filter(pk__in=surplus).update(
                active=False, deactivated_at=now, deactivation_reason="device limit reached"
            )
    return device


def device_unregister(*, user: AbstractBaseUser, device_id: int) -> Device:
    """Deactivate one of the user's devices (kept for audit). Raises ``Device.DoesNotExist`` if not theirs."""
    with transaction.atomic():
        device = Device.objects.select_for_update().get(pk=device_id, user=user)
        if device.active:
            device.active = False
            device.deactivated_at = dj_timezone.now()
            device.deactivation_reason = "unregistered by user"
            device.save(update_fields=["active", "deactivated_at", "deactivation_reason"])
    return device


def devices_set_active(*, device_ids: Sequence[int], active: bool, reason: str = "") -> int:
    """Bulk (re)activation, e.g. from the admin. Returns the number of devices changed."""
    queryset = Device.objects.filter(pk__in=device_ids, active=not active)
    if active:
        return queryset.update(active=True, deactivated_at=None, deactivation_reason="")
    return queryset.update(active=False, deactivated_at=dj_timezone.now(), deactivation_reason=reason or "deactivated")


# --- contact points --------------------------------------------------------------------------


def contact_point_invalidate(*, user_id: int, channel: str, address: str | None = None, reason: str) -> bool:
    """Mark a contact point dead after a permanent failure, so it is skipped from now on.

    email → ``email_invalid_at`` (remembering the address: a changed ``User.email`` is valid again);
    sms → ``phone_invalid_at``; push → deactivates the device whose token is ``address`` (required);
    webhook → ``webhook_invalid_at``. When ``address`` is given and no longer the user's current
    address (the user changed it since the send), nothing is marked. Returns True if something
    changed; marking an already invalid point again is a no-op. Raises ``ValueError`` for in-app.
    """
    now = dj_timezone.now()
    reason = (reason or "")[:200]
    if channel == Channel.PUSH:
        if not address:
            raise ValueError("push invalidation needs the device token as address")
        changed = Device.objects.filter(token=address, active=True).update(
            active=False, deactivated_at=now, deactivation_reason=reason or "invalid token"
        )
        return changed > 0
    if channel not in (Channel.EMAIL, Channel.SMS, Channel.WEBHOOK):
        raise ValueError(f"channel {channel!r} has no contact point to invalidate")

    user_model = get_user_model()
    with transaction.atomic():
        try:
            user = user_model.objects.get(pk=user_id)
        except user_model.DoesNotExist:
            return False
        RecipientProfile.objects.get_or_create(user=user)
        profile = RecipientProfile.objects.select_for_update().get(user=user)
        if channel == Channel.EMAIL:
            current = getattr(user, user_model.get_email_field_name(), "") or ""
            if not current or (address and address.strip().lower() != current.lower()):
                return False
            if profile.email_invalid_at and profile.email_invalid_address.lower() in ("", current.lower()):
                return False
            profile.email_invalid_at, profile.email_invalid_address = now, current
            profile.email_invalid_reason = reason
        elif channel == Channel.SMS:
            if not profile.phone or (address and address != profile.phone) or profile.phone_invalid_at:
                return False
            profile.phone_invalid_at, profile.phone_invalid_reason = now, reason
        else:
            if not profile.webhook_url or (address and address != profile.webhook_url) or profile.webhook_invalid_at:
                return False
            profile.webhook_invalid_at, profile.webhook_invalid_reason = now, reason
        profile.save()
    return True


# --- preference documents --------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON Merge Patch (RFC 7396): objects merge recursively, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def preferences_update(
    *,
    user: AbstractBaseUser,
    document: Any,
    partial: bool,
    expected_version: int | None = None,
) -> PreferenceState:
    """Replace (``partial=False``) or merge-patch (``partial=True``) the user's preference document
    (a patch's ``quiet_hours`` object replaces the stored one whole).

    The result is validated as a whole (``ValidationError`` keyed by JSON path). The row is locked,
    ``version`` grows by one, and on commit the cache receives the new version (fenced, see
    :mod:`preferences.cache`). ``expected_version`` (from If-Match) raises
    :class:`PreferenceVersionConflict` when the stored version differs.
    """
    errors = unknown_patch_keys(document) if partial else validate_document(document)
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        PreferenceDocument.objects.bulk_create(
            [PreferenceDocument(user_id=user.pk, document={}, version=0)], ignore_conflicts=True
        )
        row = PreferenceDocument.objects.select_for_update().get(user=user)
        if expected_version is not None and row.version != expected_version:
            raise PreferenceVersionConflict(row.version)
        new_document = merge_patch(row.document, document) if partial else copy.deepcopy(document)
        if partial and isinstance(document, Mapping) and isinstance(document.get("quiet_hours"), Mapping):
            # Replaced whole, not merged: a window is only meaningful complete, and the API's schema
            # can then say what a valid patch of it is without knowing the stored document.
            new_document["quiet_hours"] = copy.deepcopy(document["quiet_hours"])
        if partial:
            errors = validate_document(new_document)
            if errors:
                raise ValidationError(errors)
        row.document = new_document
        row.version += 1
        row.save(update_fields=["document", "version", "updated_at"])
        state = PreferenceState(user_id=row.user_id, version=row.version, document=new_document)
        transaction.on_commit(lambda: publish_state(state))
    return state


def preferences_opt_out_category(*, user: AbstractBaseUser, category: str) -> PreferenceState:
    """Opt the user out of ``category`` on every channel (one-click unsubscribe). Idempotent."""
    if category in MANDATORY_CATEGORIES:
        raise ValidationError({"category": ["security notifications cannot be turned off"]})
    if category not in Category.values:
        raise ValidationError({"category": ["unknown category"]})
    current = PreferenceDocument.objects.filter(user=user).values_list("version", "document").first()
    if current is not None:
        flags = (current[1].get("categories") or {}).get(category) or {}
        if all(flags.get(channel) is False for channel in ALL_CHANNELS):
            return PreferenceState(user_id=user.pk, version=current[0], document=current[1])
    patch = {"categories": {category: dict.fromkeys(ALL_CHANNELS, False)}}
    return preferences_update(user=user, document=patch, partial=True)


def preferences_delete(*, user_id: int) -> bool:
    """Delete a user's document (back to the types' defaults); the cached state is dropped on commit
    by the ``post_delete`` handler in :mod:`preferences.signals` (also for admin and cascade deletes)."""
    with transaction.atomic():
        deleted, _ = PreferenceDocument.objects.filter(user_id=user_id).delete()
    return deleted > 0


# --- in-app inbox ----------------------------------------------------------------------------

_INBOX_INSERT = """
INSERT INTO {table} (user_id, notification_id, type_key, category, title, body, data, created_at)
SELECT m.user_id, m.notification_id, m.type_key, m.category, m.title, m.body, m.data::jsonb, m.created_at
FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])
     AS m(user_id, notification_id, type_key, category, title, body, data, created_at)
WHERE EXISTS (SELECT 1 FROM {user_table} u WHERE u.{user_pk} = m.user_id)
ON CONFLICT (notification_id) DO NOTHING
RETURNING 1
"""


def inbox_write_many(messages: Sequence[Mapping[str, Any]]) -> int:
    """Store in-app messages, each at most once; returns how many rows were new.

    Each message: ``user_id``, ``notification_id`` (the idempotency key, unique), ``type_key``,
    ``category``, optional ``title``, ``body``, ``data`` (JSON object) and ``created_at``
    (aware datetime, default now). One ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING``:
    the bulk insert with ignore-conflicts on the idempotency key, written in SQL so the count of
    new rows is exact. Messages for users that no longer exist are dropped (not an error).
    """
    if not messages:
        return 0
    now = dj_timezone.now()
    title_max = InboxMessage._meta.get_field("title").max_length
    columns: list[list[Any]] = [[] for _ in range(8)]
    for message in messages:
        created_at = message.get("created_at") or now
        if isinstance(created_at, str):
            created_at = dt.datetime.fromisoformat(created_at)
        row = (
            int(message["user_id"]),
            str(message["notification_id"]),
            str(message["type_key"]),
            str(message["category"]),
            str(message.get("title") or "")[:title_max],
            str(message.get("body") or ""),
            orjson.dumps(message.get("data") or {}).decode(),
            created_at,
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    user_model = get_user_model()
    sql = _INBOX_INSERT.format(
        table=connection.ops.quote_name(InboxMessage._meta.db_table),
        user_table=connection.ops.quote_name(user_model._meta.db_table),
        user_pk=connection.ops.quote_name(user_model._meta.pk.column),
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, columns)
        return len(cursor.fetchall())


def inbox_mark_read(*, user: AbstractBaseUser, message_id: int) -> InboxMessage:
    """Mark one of the user's messages read (keeps the first read time). ``DoesNotExist`` if not theirs."""
    message = InboxMessage.objects.get(pk=message_id, user=user)
    if message.read_at is None:
        now = dj_timezone.now()
        if InboxMessage.objects.filter(pk=message.pk, read_at__isnull=True).update(read_at=now):
            message.read_at = now
        else:
            message.refresh_from_db(fields=["read_at"])
    return message


def inbox_mark_all_read(*, user: AbstractBaseUser, until: dt.datetime | None = None) -> int:
    """Mark the user's unread messages read (those created up to ``until``, if given); returns the count."""
    queryset = InboxMessage.objects.filter(user=user, read_at__isnull=True)
    if until is not None:
        queryset = queryset.filter(created_at__lte=until)
    return queryset.update(read_at=dj_timezone.now())
