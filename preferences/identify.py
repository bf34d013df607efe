"""Upserting recipients by the producer's external id, one at a time or a thousand in one transaction.

Set-based: whatever the number of recipients, a call is a fixed handful of statements (resolve the
ids, find staff accounts among them, insert the new users, insert missing profiles, update the existing
users and profiles, upsert devices), each taking its rows as one JSON document (``json_to_recordset``):
one string parameter is far cheaper to send than a Python-quoted array per column. Fields a caller
leaves out keep their value (a new recipient starts them empty); ``""`` clears a text field;
``attributes`` is merged key by key and a ``null`` value removes the key.
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
    "resolve_for_upsert",
    "upsert_resolved",
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
    if not resolved:
        return set()
    users = get_user_model()._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {users} WHERE id = ANY(%s::bigint[]) AND (is_staff OR is_superuser)",  # noqa: S608
            [list(set(resolved.values()))],
        )
        staff = {user_id for (user_id,) in cursor.fetchall()}
    return {external_id for external_id, user_id in resolved.items() if user_id in staff}


def resolve_for_upsert(external_ids: Sequence[str]) -> tuple[dict[str, int], set[str]]:
    """``({external id: user id} of the existing recipients, the ids among them that are staff accounts)``."""
    existing = resolve_recipients(external_ids)
    return existing, protected_recipients(existing)


def recipients_upsert(items: Sequence[RecipientData]) -> list[UpsertResult]:
    """Create or update ``items`` (distinct external ids) in one transaction; results in their order.
    Raises :class:`ProtectedRecipient` (and writes nothing) if one of them is a staff account."""
    if not items:
        return []
    with transaction.atomic():
        existing, protected = resolve_for_upsert([item.external_id for item in items])
        if protected:
            raise ProtectedRecipient(sorted(protected))
        return upsert_resolved(items, existing)


def upsert_resolved(items: Sequence[RecipientData], existing: dict[str, int]) -> list[UpsertResult]:
    """Write ``items`` (distinct external ids, none of them a staff account), given ``existing`` from
    :func:`resolve_for_upsert` in the same transaction; results in their order."""
    ids = [item.external_id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError("each external id may appear once per call")
    if not items:
        return []
    with transaction.atomic(savepoint=False):
        created = _insert_users([item for item in items if item.external_id not in existing])
        user_ids = existing | created
        # Only a user found by its internal id (a decimal string) may lack a profile; an external id lives on one.
        _insert_profiles([i for i in items if i.external_id in created or i.external_id.isdigit()], user_ids)
        known = [item for item in items if item.external_id in existing]
        _update_users(known, existing)
        _update_profiles(known, existing)
        _upsert_devices(items, user_ids)
    return [UpsertResult(i.external_id, user_ids[i.external_id], i.external_id in created) for i in items]


def _rows(rows: list[dict[str, Any]]) -> str:
    """One JSON document for ``json_to_recordset``: a key left out (or None) is NULL there."""
    return orjson.dumps(rows).decode()


def _given(item: RecipientData, names: Sequence[str], keys: Sequence[str]) -> dict[str, str]:
    return {key: item.fields[name] for name, key in zip(names, keys, strict=True) if name in item.fields}


_USER_KEYS = ("e", "f", "l")
_PROFILE_KEYS = ("p", "lo", "tz", "w")


def _insert_users(items: Sequence[RecipientData]) -> dict[str, int]:
    """New users for external ids nobody holds; ``{external id: user id}``. A concurrent call that
    created the same recipient first is found by the username both derive."""
    if not items:
        return {}
    users = get_user_model()._meta.db_table
    names = [recipient_username(item.external_id) for item in items]
    rows = [{"n": name, **_given(item, USER_FIELDS, _USER_KEYS)} for item, name in zip(items, names, strict=True)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {users} (username, email, first_name, last_name, password, is_superuser, is_staff,
                                 is_active, date_joined)
            SELECT n, coalesce(e, ''), coalesce(f, ''), coalesce(l, ''), '!', false, false, true, %s
            FROM json_to_recordset(%s::json) AS v(n varchar, e varchar, f varchar, l varchar)
            ON CONFLICT (username) DO NOTHING
            RETURNING username, id
            """,  # noqa: S608 - table name from model metadata; values are parameters
            [timezone.now(), _rows(rows)],
        )
        by_name = dict(cursor.fetchall())
        raced = [name for name in names if name not in by_name]
        if raced:
            cursor.execute(f"SELECT username, id FROM {users} WHERE username = ANY(%s::varchar[])", [raced])  # noqa: S608
            by_name.update(cursor.fetchall())
    return {item.external_id: by_name[name] for item, name in zip(items, names, strict=True)}


def _profile_row(item: RecipientData, user_id: int) -> dict[str, Any]:
    row = {"u": user_id, "x": item.external_id, "a": item.attributes, **_given(item, PROFILE_FIELDS, _PROFILE_KEYS)}
    if item.clear_attributes:
        row["c"] = True
    return row


_PROFILE_COLUMNS = "u bigint, x varchar, p varchar, lo varchar, tz varchar, w varchar, a jsonb, c boolean"


def _insert_profiles(items: Sequence[RecipientData], user_ids: dict[str, int]) -> None:
    """A profile for every recipient that has none yet, with the given values."""
    if not items:
        return
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {RecipientProfile._meta.db_table}
                (user_id, external_id, phone, locale, timezone, webhook_url, attributes, email_invalid_address,
                 email_invalid_reason, phone_invalid_reason, webhook_invalid_reason, created_at, updated_at)
            SELECT u, x, coalesce(p, ''), coalesce(lo, ''), coalesce(tz, ''), coalesce(w, ''),
                   jsonb_strip_nulls(coalesce(a, '{{}}'::jsonb)), '', '', '', '', %s, %s
            FROM json_to_recordset(%s::json) AS v({_PROFILE_COLUMNS})
            ON CONFLICT (user_id) DO NOTHING
            """,  # noqa: S608
            [now, now, _rows([_profile_row(item, user_ids[item.external_id]) for item in items])],
        )


def _update_users(items: Sequence[RecipientData], user_ids: dict[str, int]) -> None:
    rows = [
        {"u": user_ids[item.external_id], **given} for item in items if (given := _given(item, USER_FIELDS, _USER_KEYS))
    ]
    if not rows:
        return
    users = get_user_model()._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {users} t SET email = coalesce(v.e, t.email), first_name = coalesce(v.f, t.first_name),
                                 last_name = coalesce(v.l, t.last_name)
            FROM json_to_recordset(%s::json) AS v(u bigint, e varchar, f varchar, l varchar)
            WHERE t.id = v.u AND (t.email, t.first_name, t.last_name)
                  IS DISTINCT FROM (coalesce(v.e, t.email), coalesce(v.f, t.first_name), coalesce(v.l, t.last_name))
            """,  # noqa: S608
            [_rows(rows)],
        )


def _update_profiles(items: Sequence[RecipientData], user_ids: dict[str, int]) -> None:
    """Existing recipients' profiles: the given fields, the external id (a recipient addressed by its
    internal id until now adopts it), and a changed phone or webhook URL loses its invalid mark."""
    if not items:
        return
    rows = [_profile_row(item, user_ids[item.external_id]) for item in items]
    with connection.cursor() as cursor:
        cursor.execute(_update_profiles_sql(), [timezone.now(), _rows(rows)])


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
        FROM json_to_recordset(%s::json) AS v({_PROFILE_COLUMNS})
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
    rows = [{"u": user_id, "p": platform, "t": token} for (platform, token), user_id in devices.items()]
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {Device._meta.db_table}
                (user_id, platform, token, active, created_at, last_seen_at, deactivation_reason)
            SELECT u, p, t, true, %s, %s, '' FROM json_to_recordset(%s::json) AS v(u bigint, p varchar, t varchar)
            ON CONFLICT (platform, token) DO UPDATE SET
                user_id = EXCLUDED.user_id, active = true, last_seen_at = EXCLUDED.last_seen_at,
                deactivated_at = NULL, deactivation_reason = ''
            """,  # noqa: S608
            [now, now, _rows(rows)],
        )
