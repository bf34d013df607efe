"""API-key authentication for producer services.

Send `Authorization: Api-Key <key>` (or `X-Api-Key: <key>`). No key or an unknown key → 401;
a revoked key → 403, so a producer can tell "misconfigured" from "deliberately cut off".
"""

import hmac

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions, permissions

from notifications.models import ApiKey

KEYWORD = "Api-Key"


class RevokedApiKey(exceptions.PermissionDenied):
    default_detail = "This API key has been revoked."
    default_code = "api_key_revoked"


class ServiceUser(AnonymousUser):
    """The request's user for a producer service: not a person, never staff."""

    def __init__(self, api_key: ApiKey) -> None:
        super().__init__()
        self.api_key = api_key

    @property
    def is_authenticated(self) -> bool:  # type: ignore[override]
        return True


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        raw = self._raw_key(request)
        if raw is None:
            return None
        prefix = raw.split("_")[1] if raw.startswith("np_") and raw.count("_") >= 2 else ""
        key = ApiKey.objects.filter(prefix=prefix).first() if prefix else None
        if key is None or not hmac.compare_digest(key.key_hash, ApiKey.hash_secret(raw)):
            raise exceptions.AuthenticationFailed("Invalid API key.")
        if not key.is_active:
            raise RevokedApiKey()
        return ServiceUser(key), key

    def authenticate_header(self, request) -> str:
        return KEYWORD

    @staticmethod
    def _raw_key(request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.startswith(f"{KEYWORD} "):
            return header[len(KEYWORD) + 1 :].strip()
        return request.headers.get("X-Api-Key") or None


class HasServiceApiKey(permissions.BasePermission):
    message = "An active producer API key is required."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, ApiKey)
