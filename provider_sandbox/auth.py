"""Credential parsing shared by the sandboxes: HTTP Basic/Bearer headers and JWT inspection.

JWT signatures are verified only when a public key is configured (the sandbox normally does not
know the service-account / .p8 key); structure, algorithm and time claims are always checked.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from typing import Any

import jwt


class InvalidJwt(Exception):
    """The JWT is malformed, uses the wrong algorithm or fails signature verification."""


def parse_bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def parse_basic(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


@functools.lru_cache(maxsize=16)
def load_public_key(pem_or_path: str) -> Any:
    """A public key object from PEM text or a file path; a private key PEM yields its public half."""
    from cryptography.hazmat.primitives import serialization

    text = pem_or_path
    if "-----BEGIN" not in text and os.path.exists(text):
        with open(text, encoding="utf-8") as fh:
            text = fh.read()
    data = text.encode("utf-8")
    if b"PRIVATE KEY" in data:
        return serialization.load_pem_private_key(data, password=None).public_key()
    if b"CERTIFICATE" in data:
        from cryptography import x509

        return x509.load_pem_x509_certificate(data).public_key()
    return serialization.load_pem_public_key(data)


def inspect_jwt(token: str, algorithm: str, public_key: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(header, claims)``; raise :class:`InvalidJwt` if it is not a well-formed ``algorithm`` JWT."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidJwt(str(exc)) from None
    if header.get("alg") != algorithm:
        raise InvalidJwt(f"alg must be {algorithm}, got {header.get('alg')!r}")
    options = {
        "verify_signature": public_key is not None,
        "verify_exp": False,
        "verify_iat": False,
        "verify_nbf": False,
        "verify_aud": False,
        "verify_iss": False,
    }
    try:
        key = load_public_key(public_key) if public_key else None
        claims = jwt.decode(token, key=key, algorithms=[algorithm], options=options)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidJwt(str(exc)) from None
    return header, claims
