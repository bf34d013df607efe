"""End-user tokens: JWTs a producer's backend signs so its users' browsers can call ``/api/v1/me/*``.

A token names its key in the ``kid`` header (the API key's prefix) and its recipient in ``sub`` (the
external id). HS256 tokens are checked with that API key's secret, RS256 tokens with its registered
public key; the header's ``alg`` picks which, and each is verified with that one algorithm only.
``exp`` is required and honoured for at most ``USER_TOKEN_MAX_TTL_SECONDS`` (24 h) after ``iat`` (a
token without ``iat`` may not expire later than that from now). ``scope``, optional, is a
space-separated list of ``preferences`` and ``inbox``; without it the token reaches both.
Verification and signing are PyJWT's.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt
from django.conf import settings

from notifications.models import ApiKey

from .identify import protected_recipients
from .models import UserTokenKey
from .recipient_ids import resolve_recipients

__all__ = [
    "SCOPES",
    "InvalidUserToken",
    "TokenSubject",
    "mint_user_token",
    "new_token_secret",
    "signing_key_for",
    "verify_user_token",
]

SCOPES = ("preferences", "inbox")


class InvalidUserToken(Exception):
    """Why a token is refused: ``reason`` is a short code (``token_expired``, ``invalid_signature``…)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TokenSubject:
    user_id: int
    external_id: str
    scopes: frozenset[str]
    api_key_prefix: str


def new_token_secret() -> str:
    """A fresh HS256 secret (384 random bits)."""
    return secrets.token_urlsafe(48)


def signing_key_for(api_key: ApiKey) -> UserTokenKey:
    """The API key's token key, created with a fresh HS256 secret on first use."""
    key, _created = UserTokenKey.objects.get_or_create(api_key=api_key, defaults={"hs256_secret": new_token_secret()})
    return key


def mint_user_token(*, api_key: ApiKey, subject: str, ttl_seconds: int | None = None, scope: str | None = None) -> str:
    """An HS256 token for ``subject`` (an external id), as a producer's backend would sign it."""
    ttl = settings.USER_TOKEN_DEFAULT_TTL_SECONDS if ttl_seconds is None else ttl_seconds
    now = int(time.time())
    claims: dict[str, object] = {"sub": subject, "iat": now, "exp": now + ttl}
    if scope:
        claims["scope"] = scope
    secret = signing_key_for(api_key).hs256_secret
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": api_key.prefix})


def verify_user_token(token: str) -> TokenSubject:
    """The recipient a token names; :class:`InvalidUserToken` with the reason otherwise."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidUserToken("invalid_token", "The token is not a well-formed JWT.") from exc
    kid, algorithm = header.get("kid"), header.get("alg")
    if not isinstance(kid, str) or not kid:
        raise InvalidUserToken("unknown_key", "The token has no 'kid' header naming its key.")
    token_key = (
        UserTokenKey.objects.select_related("api_key")
        .filter(api_key__prefix=kid, api_key__revoked_at__isnull=True)
        .first()
    )
    if token_key is None:
        raise InvalidUserToken("unknown_key", "The token's key is unknown or revoked.")
    if algorithm == "HS256":
        verification_key: str = token_key.hs256_secret
    elif algorithm == "RS256" and token_key.rs256_public_key:
        verification_key = token_key.rs256_public_key
    else:
        raise InvalidUserToken("unsupported_algorithm", f"Algorithm {algorithm!r} is not accepted for this key.")
    claims = _decode(token, verification_key, algorithm)
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidUserToken("missing_sub", "The token has no 'sub' claim naming the recipient.")
    _check_lifetime(claims)
    scopes = _scopes(claims.get("scope"))
    user_id = resolve_recipients([subject]).get(subject)
    if user_id is None or protected_recipients({subject: user_id}):
        raise InvalidUserToken("unknown_recipient", "No recipient has the token's 'sub'.")
    return TokenSubject(user_id=user_id, external_id=subject, scopes=scopes, api_key_prefix=kid)


def _decode(token: str, key: str, algorithm: str) -> dict:
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            options={"require": ["exp"], "verify_aud": False},
            leeway=settings.USER_TOKEN_LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidUserToken("token_expired", "The token has expired.") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidUserToken("invalid_signature", "The token's signature does not match its key.") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidUserToken("missing_exp", "The token has no 'exp' claim.") from exc
    except jwt.PyJWTError as exc:
        raise InvalidUserToken("invalid_token", f"The token is invalid: {exc}.") from exc


def _check_lifetime(claims: dict) -> None:
    """``exp`` counts for at most the maximum lifetime after ``iat`` (or after now, without ``iat``)."""
    limit, leeway = settings.USER_TOKEN_MAX_TTL_SECONDS, settings.USER_TOKEN_LEEWAY_SECONDS
    now = time.time()
    issued = claims.get("iat")
    if issued is not None:
        if now > float(issued) + limit + leeway:
            raise InvalidUserToken("token_expired", f"The token is older than {limit} seconds, the longest honoured.")
    elif float(claims["exp"]) > now + limit + leeway:
        raise InvalidUserToken("token_lifetime", f"Without 'iat' a token may not expire more than {limit} s ahead.")


def _scopes(raw: object) -> frozenset[str]:
    if raw is None:
        return frozenset(SCOPES)
    if not isinstance(raw, str):
        raise InvalidUserToken("invalid_scope", "'scope' must be a space-separated string.")
    scopes = frozenset(raw.split())
    unknown = scopes - set(SCOPES)
    if unknown:
        raise InvalidUserToken("invalid_scope", f"Unknown scope(s): {', '.join(sorted(unknown))}.")
    return scopes
