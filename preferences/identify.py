"""Upserting recipients by the producer's external id, one at a time or a thousand in one transaction.

Set-based: whatever the number of recipients, a call is a fixed handful of statements (resolve the
ids, insert the new users, insert missing profiles, update the existing users and profiles, upsert
devices). Fields a caller leaves out keep their value (a new recipient starts them empty); ``""``
clears a text field; ``attributes`` is merged key by key and a ``null`` value removes the key.
Input is validated by the caller (:mod:`preferences.recipient_serializers`); this module trusts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from .models import Device, RecipientProfile
from .recipient_ids import resolve_recipients

__all__ = [
    "PROFILE_FIELDS",
    "USER_FIELDS",
    "ProtectedRecipient",
    "RecipientData",
    "UpsertResult",
    "protected_recipients",
    "recipient_username",
    "recipients_upsert",
]

PROTECTED = "This id belongs to a staff account, which the API cannot change or erase."


class ProtectedRecipient(Exception):
    """An external id names a staff or superuser account: the producer API never touches those."""

    def __init__(self, external_ids: Sequence[str]) -> None:
        super().__init__(PROTECTED)
        self.external_ids = list(external_ids)


#: Fields stored on the user row (Django's ``User``) and on the profile row.
USER_FIELDS = ("email", "first_name", "last_name")
PROFILE_FIELDS = ("phone", "locale", "timezone", "webhook_url")


@dataclass(frozen=True)
class RecipientData:
    """One recipient to upsert: only the keys present in ``fields`` are written."""

    external_id: str
    fields: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, Any] | None = None  # merged; a None value removes the key
    devices: list[tuple[str, str]] = field(default_factory=list)  # (platform, token)
    clear_attributes: bool = False  # drop the stored attributes first


@dataclass(frozen=True)
class UpsertResult:
    external_id: str
    user_id: int
    created: bool


def recipient_username(external_id: str) -> str:
    """The Django username of a recipient created by the identify API: fixed length, no characters
    of the external id (which may be longer than a username, or be an e-mail address)."""
    return "rcpt_" + hashlib.sha256(external_id.encode()).hexdigest()[:40]


def protected_recipients(resolved: dict[str, int]) -> set[str]:
    """The external ids among ``resolved`` that name a staff or superuser account."""
    staff = set(
        get_user_model()
        .objects.filter(pk__in=resolved.values())
        .filter(Q(is_staff=True) | Q(is_superuser=True))
        .values_list("pk", flat=True)
    )
    return {external_id for external_id, user_id in resolved.items() if user_id in staff}


def recipients_upsert(items: Sequence[RecipientData]) -> list[UpsertResult]:
    """Create or update ``items`` (distinct external ids) in one transaction; results in their order.
    Raises :class:`ProtectedRecipient` (and writes nothing) if one of them is a staff account."""
    if not items:
        return []
    ids = [item.external_id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("each external id may appear once per call")
    with transaction.atomic():
        existing = resolve_recipients(ids)
        protected = protected_recipients(existing)
        if protected:
            raise ProtectedRecipient(sorted(protected))
        created = _insert_users([item for item in items if item.external_id not in existing])
        user_ids = existing | created
        _insert_profiles(items, user_ids)
        known = [item for item in items if item.external_id in existing]
        _update_users(known, existing)
        _update_profiles(known, existing)
        _upsert_devices(items, user_ids)
    return [UpsertResult(i.external_id, user_ids[i.external_id], i.external_id in created) for i in items]


def _column(items: Sequence[RecipientData], name: str) -> list[str | None]:
    return [item.fields.get(name) for item in items]


def _insert_users(items: Sequence[RecipientData]) -> dict[str, int]:
    """New users for external ids nobody holds; ``{external id: user id}``. A concurrent call that
    created the same recipient first is found by the username both derive."""
    if not items:
        return {}
    users = get_user_model()._meta.db_table
    names = [recipient_username(item.external_id) for item in items]
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {users} (username, email, first_name, last_name, password, is_superuser, is_staff,
                                 is_active, date_joined)
            SELECT n, coalesce(e, ''), coalesce(f, ''), coalesce(l, ''), '!', false, false, true, %s
            FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[]) AS v(n, e, f, l)
            ON CONFLICT (username) DO NOTHING
            """,  # noqa: S608 - table name from model metadata; values are parameters
            [now, names, _column(items, "email"), _column(items, "first_name"), _column(items, "last_name")],
        )
        cursor.execute(f"SELECT username, id FROM {users} WHERE username = ANY(%s::varchar[])", [names])  # noqa: S608
        by_name = dict(cursor.fetchall())
    return {item.external_id: by_name[name] for item, name in zip(items, names, strict=True)}


def _attributes_json(items: Sequence[RecipientData]) -> list[str | None]:
    return [None if item.attributes is None else orjson.dumps(item.attributes).decode() for item in items]


def _insert_profiles(items: Sequence[RecipientData], user_ids: dict[str, int]) -> None:
    """A profile for every recipient that has none yet, with the given values."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {RecipientProfile._meta.db_table}
                (user_id, external_id, phone, locale, timezone, webhook_url, attributes, email_invalid_address,
                 email_invalid_reason, phone_invalid_reason, webhook_invalid_reason, created_at, updated_at)
            SELECT u, x, coalesce(p, ''), coalesce(lo, ''), coalesce(tz, ''), coalesce(w, ''),
                   jsonb_strip_nulls(coalesce(a, '{{}}'::jsonb)), '', '', '', '', %s, %s
            FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[],
                        %s::jsonb[]) AS v(u, x, p, lo, tz, w, a)
            ON CONFLICT (user_id) DO NOTHING
            """,  # noqa: S608
            [
                now,
                now,
                [user_ids[item.external_id] for item in items],
                [item.external_id for item in items],
                _column(items, "phone"),
                _column(items, "locale"),
                _column(items, "timezone"),
                _column(items, "webhook_url"),
                _attributes_json(items),
            ],
        )


def _update_users(items: Sequence[RecipientData], user_ids: dict[str, int]) -> None:
    items = [item for item in items if any(name in item.fields for name in USER_FIELDS)]
    if not items:
        return
    users = get_user_model()._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {users} t SET email = coalesce(v.e, t.email), first_name = coalesce(v.f, t.first_name),
                                 last_name = coalesce(v.l, t.last_name)
            FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[], %s::varchar[]) AS v(u, e, f, l)
            WHERE t.id = v.u
            """,  # noqa: S608
            [
                [user_ids[item.external_id] for item in items],
                _column(items, "email"),
                _column(items, "first_name"),
                _column(items, "last_name"),
            ],
        )


def _update_profiles(items: Sequence[RecipientData], user_ids: dict[str, int]) -> None:
    """Existing recipients' profiles: the given fields, the external id (a recipient addressed by its
    internal id until now adopts it), and a changed phone or webhook URL loses its invalid mark."""
    if not items:
        return
    with connection.cursor() as cursor:
        cursor.execute(_update_profiles_sql(), _update_profiles_params(items, user_ids))


def _update_profiles_params(items: Sequence[RecipientData], user_ids: dict[str, int]) -> list[Any]:
    return [
        timezone.now(),
        [user_ids[item.external_id] for item in items],
        [item.external_id for item in items],
        _column(items, "phone"),
        _column(items, "locale"),
        _column(items, "timezone"),
        _column(items, "webhook_url"),
        _attributes_json(items),
        [item.clear_attributes for item in items],
    ]


@lru_cache(maxsize=1)
def _update_profiles_sql() -> str:
    return f"""
        UPDATE {RecipientProfile._meta.db_table} t SET
            external_id = v.x,
            phone = coalesce(v.p, t.phone),
            phone_invalid_at = CASE WHEN v.p IS DISTINCT FROM t.phone AND v.p IS NOT NULL
                                    THEN NULL ELSE t.phone_invalid_at END,
            phone_invalid_reason = CASE WHEN v.p IS DISTINCT FROM t.phone AND v.p IS NOT NULL
                                        THEN '' ELSE t.phone_invalid_reason END,
            locale = coalesce(v.lo, t.locale),
            timezone = coalesce(v.tz, t.timezone),
            webhook_url = coalesce(v.w, t.webhook_url),
            webhook_invalid_at = CASE WHEN v.w IS DISTINCT FROM t.webhook_url AND v.w IS NOT NULL
                                      THEN NULL ELSE t.webhook_invalid_at END,
            webhook_invalid_reason = CASE WHEN v.w IS DISTINCT FROM t.webhook_url AND v.w IS NOT NULL
                                          THEN '' ELSE t.webhook_invalid_reason END,
            attributes = CASE WHEN v.c THEN jsonb_strip_nulls(coalesce(v.a, '{{}}'::jsonb))
                              WHEN v.a IS NULL THEN t.attributes
                              ELSE jsonb_strip_nulls(t.attributes || v.a) END,
            updated_at = %s
        FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[],
                    %s::jsonb[], %s::boolean[]) AS v(u, x, p, lo, tz, w, a, c)
        WHERE t.user_id = v.u
    """  # noqa: S608


def _upsert_devices(items: Sequence[RecipientData], user_ids: dict[str, int]) -> None:
    """Register the given push tokens; a token another recipient held moves (as ``device_register``)."""
    devices: dict[tuple[str, str], int] = {}
    for item in items:
        for platform, token in item.devices:
            devices[platform, token] = user_ids[item.external_id]  # the last holder in the call wins
    if not devices:
        return
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {Device._meta.db_table}
                (user_id, platform, token, active, created_at, last_seen_at, deactivation_reason)
            SELECT u, p, t, true, %s, %s, '' FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[]) AS v(u, p, t)
            ON CONFLICT (platform, token) DO UPDATE SET
                user_id = EXCLUDED.user_id, active = true, last_seen_at = EXCLUDED.last_seen_at,
                deactivated_at = NULL, deactivation_reason = ''
            """,  # noqa: S608
            [
                now,
                now,
                list(devices.values()),
                [platform for platform, _ in devices],
                [token for _, token in devices],
            ],
        )
