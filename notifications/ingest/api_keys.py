"""Verifying producer API keys without a database query per request.

Keys are looked up by their public prefix and kept per process for `API_KEY_CACHE_SECONDS`: a
revocation, or a quota set in the admin, applies within that time. While the database is away, a
key seen before stays good (the request then fails at its commit with a 503, not a 401).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import InterfaceError, OperationalError

from notifications.models import ApiKey

#: Keys (and unknown prefixes) remembered per process at most.
MAX_CACHED = 1000


@dataclass(frozen=True)
class VerifiedKey:
    id: int
    prefix: str
    service: str
    key_hash: str
    active: bool
    quota_rate: float | None
    quota_burst: int | None


class InvalidApiKey(Exception):
    """No key, or not one of ours (401)."""


class RevokedApiKey(Exception):
    """A key that was revoked (403)."""


def raw_key(authorization: str, x_api_key: str | None) -> str | None:
    """The key of `Authorization: Api-Key <key>` or `X-Api-Key: <key>`."""
    if authorization.startswith("Api-Key "):
        return authorization[len("Api-Key ") :].strip() or None
    return x_api_key or None


class ApiKeyCache:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, VerifiedKey | None]] = OrderedDict()

    def verify(self, raw: str | None) -> VerifiedKey:
        """The key `raw` belongs to; InvalidApiKey or RevokedApiKey otherwise."""
        if not raw or not raw.startswith("np_") or raw.count("_") < 2:
            raise InvalidApiKey
        prefix = raw.split("_")[1]
        key = self._lookup(prefix)
        if key is None or not hmac.compare_digest(key.key_hash, ApiKey.hash_secret(raw)):
            raise InvalidApiKey
        if not key.active:
            raise RevokedApiKey
        return key

    def _lookup(self, prefix: str) -> VerifiedKey | None:
        now = self._clock()
        with self._lock:
            cached = self._entries.get(prefix)
        if cached is not None and now - cached[0] < settings.API_KEY_CACHE_SECONDS:
            return cached[1]
        try:
            row = ApiKey.objects.filter(prefix=prefix).first()
        except (OperationalError, InterfaceError):
            if cached is not None:
                return cached[1]  # the database is away: a key known a moment ago is still good
            raise
        key = None
        if row is not None:
            key = VerifiedKey(
                id=row.pk,
                prefix=row.prefix,
                service=row.service,
                key_hash=row.key_hash,
                active=row.is_active,
                quota_rate=row.quota_rate,
                quota_burst=row.quota_burst,
            )
        with self._lock:
            self._entries[prefix] = (now, key)
            self._entries.move_to_end(prefix)
            while len(self._entries) > MAX_CACHED:
                self._entries.popitem(last=False)
        return key

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


api_keys = ApiKeyCache()
