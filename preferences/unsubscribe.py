"""Signed, expiring one-click unsubscribe links (RFC 8058) for one user and one category.

The token is ``TimestampSigner(salt="unsubscribe").sign_object({"u": user_id, "c": category})``:
URL-safe, tamper-evident (HMAC with ``SECRET_KEY``) and stamped, so it expires after
``UNSUBSCRIBE_MAX_AGE`` seconds (default 30 days). The email worker puts
:func:`unsubscribe_headers` on marketing-style mail; mail clients then POST
``List-Unsubscribe=One-Click`` to the URL, which opts the user out of the category on every channel.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.core import signing
from django.urls import get_script_prefix, get_urlconf, reverse

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
    "unsubscribe_url_maker",
]

SALT = "unsubscribe"
CATEGORIES = frozenset(Category.values)  # TextChoices.values builds a new list on every access


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
    """``_signer().sign_object({"u": user_id, "c": category})``, computed without Django's per-call
    key derivation: the dispatcher signs one link per e-mail, and deriving the salted HMAC key
    (a SHA-256 of salt + secret) every time was most of the cost. Same bytes as Django's signer
    (tests compare the two), verified by Django's signer in :func:`read_unsubscribe_token`.
    The JSON of the category (one of a few known names) and the base-62 timestamp of the current
    second are cached too: ``json.dumps`` and ``b62_encode`` cost more than the HMAC itself."""
    if category in MANDATORY_CATEGORIES:
        raise ValueError(f"{category} notifications cannot be unsubscribed from")
    category_json = _CATEGORY_JSON.get(category)
    if category_json is None:
        raise ValueError(f"unknown category {category!r}")
    # json.dumps({"u": int, "c": str}, separators=(",", ":")), as Django's JSONSerializer writes it
    payload = signing.b64_encode(f'{{"u":{int(user_id)},"c":{category_json}}}'.encode())
    value = f"{payload.decode()}:{_timestamp(int(time.time()))}"
    digest = hmac.digest(_signing_key(SALT, settings.SECRET_KEY), value.encode(), "sha256")
    return f"{value}:{signing.b64_encode(digest).decode()}"


_CATEGORY_JSON = {category: json.dumps(category) for category in CATEGORIES}
_last_timestamp: tuple[int, str] = (-1, "")


def _timestamp(now: int) -> str:
    """``signing.b62_encode(now)``, computed once per second."""
    global _last_timestamp  # a one-entry cache; a race between threads only recomputes it
    cached = _last_timestamp
    if cached[0] != now:
        cached = _last_timestamp = (now, signing.b62_encode(now))
    return cached[1]


@lru_cache(maxsize=4)
def _signing_key(salt: str, secret: str) -> bytes:
    """Django's ``salted_hmac`` key for ``Signer(salt=salt).signature()`` (sha256)."""
    return hashlib.sha256(f"{salt}signer".encode() + secret.encode()).digest()


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


_PLACEHOLDER = "TOKEN"


@lru_cache(maxsize=16)
def _url_around_token(base: str, script_prefix: str, urlconf: str | None) -> tuple[str, str]:
    """The unsubscribe URL split around its token. Tokens are URL-safe (base64url and ':'), so
    ``reverse`` inserts them verbatim and the split gives the same URL without resolving the route
    per message (it cost the dispatcher more than signing the token)."""
    path = reverse("preferences:unsubscribe", kwargs={"token": _PLACEHOLDER}, urlconf=urlconf)
    before, _, after = path.partition(_PLACEHOLDER)
    return f"{base}{before}", after


def unsubscribe_url(user_id: int, category: str) -> str:
    """Absolute one-click URL, based on ``PUBLIC_BASE_URL`` (default ``http://127.0.0.1:8000``)."""
    return unsubscribe_url_maker()(user_id, category)


def unsubscribe_url_maker() -> Callable[[int, str], str]:
    """:func:`unsubscribe_url` with the URL's fixed parts resolved once, for making many links (the
    dispatcher takes one per batch: the script-prefix and URLconf lookups are thread-local reads)."""
    base = getattr(settings, "PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
    before, after = _url_around_token(base, get_script_prefix(), get_urlconf())

    def make(user_id: int, category: str) -> str:
        return f"{before}{make_unsubscribe_token(user_id, category)}{after}"

    return make


def unsubscribe_headers(user_id: int, category: str) -> dict[str, str]:
    """The RFC 8058 headers for an email of ``category`` to ``user_id``."""
    return {
        "List-Unsubscribe": f"<{unsubscribe_url(user_id, category)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
