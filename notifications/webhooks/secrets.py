"""Standard Webhooks signing secrets: validating, generating, fingerprinting, and endpoint URLs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets as _random
from urllib.parse import urlsplit, urlunsplit

WHSEC_PREFIX = "whsec_"
#: Standard Webhooks asks for 24 to 64 random bytes.
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64


class SecretError(ValueError):
    """A signing secret that cannot be used; the message never contains the secret."""


def secret_key(secret: str) -> bytes:
    """The key bytes of ``whsec_<base64>``; raises `SecretError` saying what is wrong."""
    if not secret.startswith(WHSEC_PREFIX):
        raise SecretError(f"a signing secret starts with {WHSEC_PREFIX!r}")
    try:
        encoded = secret[len(WHSEC_PREFIX) :]
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)  # padding optional
    except (binascii.Error, ValueError):
        raise SecretError(f"a signing secret is {WHSEC_PREFIX}<base64>; the part after it is not base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise SecretError(f"a signing secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}")
    return key


def generate_secret(n_bytes: int = 32) -> str:
    return WHSEC_PREFIX + base64.b64encode(_random.token_bytes(n_bytes)).decode()


def fingerprint(secret: str) -> str:
    """A short, non-reversible label of a secret (to tell secrets apart in the admin)."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def normalise_url(url: str) -> str:
    """``url`` with its scheme and host lower-cased, a default port and a fragment dropped: how an
    endpoint and a contact point's URL are compared."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    if parts.username is not None:
        userinfo = parts.username + (f":{parts.password}" if parts.password is not None else "")
        host = f"{userinfo}@{host}"
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def url_origin(url: str) -> str:
    """``scheme://host:port`` of ``url`` (never the user info): the endpoint of an unregistered URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (443 if scheme == "https" else 80)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"
