"""``Authorization: Bearer <end-user token>`` for the ``/api/v1/me/*`` endpoints (DRF authentication).

A missing Bearer header leaves the request to the other authentication classes (session, DRF token).
A bad token is a 401 whose body and ``WWW-Authenticate`` header (RFC 6750) give the reason. A token
whose ``scope`` does not cover the view's ``token_scope`` is a 403 (``insufficient_scope``).
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from rest_framework import authentication, exceptions, permissions

from .user_tokens import InvalidUserToken, TokenSubject, verify_user_token

__all__ = ["BearerTokenAuthentication", "TokenScopeAllows"]

KEYWORD = "Bearer"
REALM = "api"


class UserTokenInvalid(exceptions.AuthenticationFailed):
    default_code = "invalid_token"


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """End users, by a JWT their product's backend signed (:mod:`preferences.user_tokens`)."""

    def authenticate(self, request):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != KEYWORD.lower():
            return None
        token = token.strip()
        try:
            if not token:
                raise InvalidUserToken("invalid_token", "The Bearer header carries no token.")
            subject = verify_user_token(token)
        except InvalidUserToken as exc:
            request._user_token_error = exc
            error = UserTokenInvalid(exc.detail)
            error.default_code = exc.reason  # the body's "code" (notifications.api_errors)
            raise error from None
        user = get_user_model().objects.filter(pk=subject.user_id, is_active=True).first()
        if user is None:
            request._user_token_error = InvalidUserToken("unknown_recipient", "No recipient has the token's 'sub'.")
            error = UserTokenInvalid("No recipient has the token's 'sub'.")
            error.default_code = "unknown_recipient"
            raise error
        return user, subject

    def authenticate_header(self, request) -> str:
        failure = getattr(request, "_user_token_error", None)
        if failure is None:
            return f'{KEYWORD} realm="{REALM}"'
        description = failure.detail.replace('"', "'")
        return f'{KEYWORD} realm="{REALM}", error="invalid_token", error_description="{description}"'


class InsufficientScope(exceptions.PermissionDenied):
    default_detail = "The token's scope does not cover this endpoint."
    default_code = "insufficient_scope"


class TokenScopeAllows(permissions.BasePermission):
    """A request authenticated by an end-user token needs the view's ``token_scope`` in its scopes."""

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, TokenSubject) and getattr(view, "token_scope", None) not in request.auth.scopes:
            raise InsufficientScope
        return True
