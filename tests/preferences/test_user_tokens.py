"""End-user tokens (JWT) on /api/v1/me/*: the token matrix, scopes, RS256, and `manage.py mint_user_token`."""

from __future__ import annotations

import io
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from notifications.models import ApiKey
from preferences.user_tokens import mint_user_token, signing_key_for

from .factories import InboxMessageFactory, RecipientProfileFactory

pytestmark = pytest.mark.django_db

INBOX = "/api/v1/me/notifications"
PREFERENCES = "/api/v1/me/preferences"


@pytest.fixture
def key():
    return ApiKey.generate(service="shop")[0]


@pytest.fixture
def ana():
    return RecipientProfileFactory(external_id="ana-1").user


def bearer(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def signed(key: ApiKey, claims: dict, *, secret: str | None = None, kid: str | None = None) -> str:
    secret = secret or signing_key_for(key).hs256_secret
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid or key.prefix})


def test_the_five_line_example_works(key, ana):
    now = int(time.time())
    secret = signing_key_for(key).hs256_secret  # handed to the producer's backend once
    token = jwt.encode({"sub": "ana-1", "iat": now, "exp": now + 3600}, secret, "HS256", headers={"kid": key.prefix})
    mine = InboxMessageFactory(user=ana)
    response = bearer(token).get(INBOX)
    assert response.status_code == 200, response.json()
    assert [m["id"] for m in response.json()["results"]] == [mine.pk]
    assert bearer(token).get(PREFERENCES).status_code == 200


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k, o: signed(k, {"sub": "ana-1", "exp": int(time.time()) - 120}), "token_expired"),
        (lambda k, o: signed(k, {"sub": "ana-1", "exp": int(time.time()) + 60}, secret="x" * 64), "invalid_signature"),
        (lambda k, o: signed(o, {"sub": "ana-1", "exp": int(time.time()) + 60}, kid=k.prefix), "invalid_signature"),
        (lambda k, o: signed(k, {"sub": "ana-1", "exp": int(time.time()) + 60}, kid="nokey123"), "unknown_key"),
        (lambda k, o: signed(k, {"exp": int(time.time()) + 60}), "missing_sub"),
        (lambda k, o: signed(k, {"sub": "ana-1"}), "missing_exp"),
        (lambda k, o: signed(k, {"sub": "nobody", "exp": int(time.time()) + 60}), "unknown_recipient"),
        (
            lambda k, o: signed(k, {"sub": "ana-1", "iat": int(time.time()) - 90_000, "exp": int(time.time()) + 60}),
            "token_expired",  # older than the 24 h honoured
        ),
        (lambda k, o: signed(k, {"sub": "ana-1", "exp": int(time.time()) + 90_000}), "token_lifetime"),
        (lambda k, o: jwt.encode({"sub": "ana-1", "exp": int(time.time()) + 60}, None, "none"), "unknown_key"),
        (lambda k, o: "not.a.jwt", "invalid_token"),
    ],
)
def test_bad_tokens_are_401_with_the_reason(key, ana, make, reason):
    other = ApiKey.generate(service="other")[0]
    signing_key_for(key), signing_key_for(other)  # both keys can verify tokens
    response = bearer(make(key, other)).get(INBOX)
    assert response.status_code == 401
    assert response.json()["code"] == reason, response.json()
    assert response["WWW-Authenticate"].startswith('Bearer realm="api", error="invalid_token"')


def test_a_revoked_api_key_revokes_its_tokens(key, ana):
    token = mint_user_token(api_key=key, subject="ana-1")
    ApiKey.objects.filter(pk=key.pk).update(revoked_at="2026-01-01T00:00:00Z")
    assert bearer(token).get(INBOX).json()["code"] == "unknown_key"


def test_without_credentials_the_answer_says_bearer(ana):
    response = APIClient().get(INBOX)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_a_token_never_reaches_another_recipients_data(key, ana):
    bob = RecipientProfileFactory(external_id="bob-1").user
    bobs = InboxMessageFactory(user=bob)
    client = bearer(mint_user_token(api_key=key, subject="ana-1"))
    assert client.get(INBOX).json()["results"] == []
    assert client.post(f"{INBOX}/{bobs.pk}/read").status_code == 404


def test_scopes_limit_what_a_token_reaches(key, ana):
    inbox_only = bearer(mint_user_token(api_key=key, subject="ana-1", scope="inbox"))
    assert inbox_only.get(INBOX).status_code == 200
    refused = inbox_only.get(PREFERENCES)
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_scope"
    bad_scope = bearer(signed(key, {"sub": "ana-1", "exp": int(time.time()) + 60, "scope": "admin"}))
    assert bad_scope.get(INBOX).json()["code"] == "invalid_scope"


def test_rs256_with_a_registered_public_key(key, ana):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = {"sub": "ana-1", "exp": int(time.time()) + 60}
    token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": key.prefix})
    token_key = signing_key_for(key)
    assert bearer(token).get(INBOX).json()["code"] == "unsupported_algorithm"  # no public key registered yet
    token_key.rs256_public_key = pem.decode()
    token_key.full_clean()
    token_key.save()
    assert bearer(token).get(INBOX).status_code == 200


def test_mint_user_token_prints_a_token_the_api_accepts(key, ana):
    out = io.StringIO()
    call_command("mint_user_token", "ana-1", "--key", key.prefix, "--ttl", "600", stdout=out)
    token = out.getvalue().strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "ana-1" and claims["exp"] - claims["iat"] == 600
    assert bearer(token).get(INBOX).status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ana-1", "--key", "nokey123"], "no active API key"),
        (["a b", "--key", "x"], "is not an external id"),
        (["ana-1", "--key", "x", "--ttl", "100000"], "--ttl"),
        (["ana-1", "--key", "x", "--scope", "admin"], "unknown scope"),
    ],
)
def test_mint_user_token_refuses_bad_input_in_one_line(key, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("mint_user_token", *args)
