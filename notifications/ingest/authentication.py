"""API-key authentication for producer services, as DRF sees it (the schema's security scheme).

Send `Authorization: Api-Key <key>` (or `X-Api-Key: <key>`). No key or an unknown key → 401; a revoked
key → 403, so a producer can tell "misconfigured" from "deliberately cut off". Verification is
`api_keys.ApiKeyCache` (the ingest path calls it directly).
"""

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions, permissions

from notifications.ingest.api_keys import InvalidApiKey, RevokedApiKey, VerifiedKey, api_keys, raw_key

KEYWORD = "Api-Key"


class RevokedApiKeyDenied(exceptions.PermissionDenied):
    default_detail = "This API key has been revoked."
    default_code = "api_key_revoked"


class ServiceUser(AnonymousUser):
    """The request's user for a producer service: not a person, never staff."""

    def __init__(self, api_key: VerifiedKey) -> None:
        super().__init__()
        self.api_key = api_key

    @property
    def is_authenticated(self) -> bool:  # type: ignore[override]
        return True


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        raw = raw_key(request.headers.get("Authorization", ""), request.headers.get("X-Api-Key"))
        if raw is None:
            return None
        try:
            key = api_keys.verify(raw)
        except InvalidApiKey:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
        except RevokedApiKey:
            raise RevokedApiKeyDenied() from None
        return ServiceUser(key), key

    def authenticate_header(self, request) -> str:
        return KEYWORD


class HasServiceApiKey(permissions.BasePermission):
    message = "An active producer API key is required."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, VerifiedKey)
