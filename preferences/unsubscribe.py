"""Signed, expiring one-click unsubscribe links (RFC 8058) for one user and one category.

The token is ``TimestampSigner(salt="unsubscribe").sign_object({"u": user_id, "c": category})``:
URL-safe, tamper-evident (HMAC with ``SECRET_KEY``) and stamped, so it expires after
``UNSUBSCRIBE_MAX_AGE`` seconds (default 30 days). The email worker puts
:func:`unsubscribe_headers` on marketing-style mail; mail clients then POST
``List-Unsubscribe=One-Click`` to the URL, which opts the user out of the category on every channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.urls import reverse

from notifications.models import MANDATORY_CATEGORIES, Category

__all__ = [
    "SALT",
    "InvalidUnsubscribeToken",
    "UnsubscribeTarget",
    "UnsubscribeTokenExpired",
    "make_unsubscribe_token",
    "read_unsubscribe_token",
    "unsubscribe_headers",
    "unsubscribe_url",
]

SALT = "unsubscribe"


class InvalidUnsubscribeToken(Exception):
    """The token was tampered with, is malformed, or names something that cannot be unsubscribed."""


class UnsubscribeTokenExpired(InvalidUnsubscribeToken):
    """The token's signature is fine but it is older than the maximum age."""


@dataclass(frozen=True, slots=True)
class UnsubscribeTarget:
    user_id: int
    category: str


def max_age() -> int:
    return int(getattr(settings, "UNSUBSCRIBE_MAX_AGE", 2592000))


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=SALT)


def make_unsubscribe_token(user_id: int, category: str) -> str:
    if category in MANDATORY_CATEGORIES:
        raise ValueError(f"{category} notifications cannot be unsubscribed from")
    if category not in Category.values:
        raise ValueError(f"unknown category {category!r}")
    return _signer().sign_object({"u": int(user_id), "c": category})


def read_unsubscribe_token(token: str, *, max_age_seconds: int | None = None) -> UnsubscribeTarget:
    """Verify a token. Raises :class:`UnsubscribeTokenExpired` or :class:`InvalidUnsubscribeToken`."""
    try:
        payload = _signer().unsign_object(token, max_age=max_age() if max_age_seconds is None else max_age_seconds)
    except signing.SignatureExpired as exc:
        raise UnsubscribeTokenExpired("expired link") from exc
    except (signing.BadSignature, ValueError, UnicodeDecodeError) as exc:
        raise InvalidUnsubscribeToken("invalid link") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("u"), int) or not isinstance(payload.get("c"), str):
        raise InvalidUnsubscribeToken("invalid link")
    return UnsubscribeTarget(user_id=payload["u"], category=payload["c"])


def unsubscribe_url(user_id: int, category: str) -> str:
    """Absolute one-click URL, based on ``PUBLIC_BASE_URL`` (default ``http://127.0.0.1:8000``)."""
    base = getattr(settings, "PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
    path = reverse("preferences:unsubscribe", kwargs={"token": make_unsubscribe_token(user_id, category)})
    return f"{base}{path}"


def unsubscribe_headers(user_id: int, category: str) -> dict[str, str]:
    """The RFC 8058 headers for an email of ``category`` to ``user_id``."""
    return {
        "List-Unsubscribe": f"<{unsubscribe_url(user_id, category)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
