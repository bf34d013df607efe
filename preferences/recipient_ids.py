"""Resolving producers' external recipient ids to internal user ids, a whole batch in one query.

A recipient is named by its profile's ``external_id``. A user without one (created in the admin or
by Django code, never through the identify API) keeps being named by its internal id written as a
decimal string, as before external ids existed; an external id always wins over that fallback.
Why resolution happens in the dispatcher rather than at ingest: docs/architecture.md, "Recipients".
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from django.contrib.auth import get_user_model
from django.db import connection

from .models import RecipientProfile

__all__ = ["external_ids_of", "resolve_recipients"]

#: The largest user id the fallback accepts (bigint; 18 digits always fit).
_MAX_DIGITS = 18


def _fallback_id(recipient: str) -> int | None:
    """The user id a decimal recipient string names when no external id matches ("42", not "042")."""
    if not recipient.isascii() or not recipient.isdigit() or len(recipient) > _MAX_DIGITS:
        return None
    number = int(recipient)
    return number if str(number) == recipient else None


def resolve_recipients(recipients: Iterable[str]) -> dict[str, int]:
    """``{recipient: user id}`` for the recipients that name a user; unknown ones are absent. One
    statement for the whole batch: an index probe per external id, and per decimal one a probe of the
    user table for the fallback."""
    wanted = list(dict.fromkeys(recipients))
    if not wanted:
        return {}
    numbers = [n for n in map(_fallback_id, wanted) if n is not None]
    with connection.cursor() as cursor:
        cursor.execute(_resolve_sql(), [wanted, numbers])
        rows = cursor.fetchall()
    resolved: dict[str, int] = {}
    for recipient, user_id, explicit in rows:
        if explicit or recipient not in resolved:  # an external id wins over the fallback
            resolved[recipient] = user_id
    return resolved


def external_ids_of(user_ids: Iterable[int]) -> dict[int, str]:
    """``{user id: the recipient id producers use}``: the external id, or the decimal user id."""
    ids = list(dict.fromkeys(int(user_id) for user_id in user_ids))
    named = RecipientProfile.objects.filter(user_id__in=ids, external_id__isnull=False)
    known = dict(named.values_list("user_id", "external_id"))
    return {user_id: known.get(user_id, str(user_id)) for user_id in ids}


@lru_cache(maxsize=1)
def _resolve_sql() -> str:
    profiles = RecipientProfile._meta.db_table
    users = get_user_model()._meta.db_table
    return f"""
        SELECT p.external_id, p.user_id, true FROM {profiles} p WHERE p.external_id = ANY(%s::varchar[])
        UNION ALL
        SELECT u.id::text, u.id, false FROM {users} u
        WHERE u.id = ANY(%s::bigint[])
          AND NOT EXISTS (SELECT 1 FROM {profiles} q WHERE q.user_id = u.id AND q.external_id IS NOT NULL)
    """  # noqa: S608 - table names from model metadata; the ids are parameters
