"""FCM HTTP v1 sandbox plus the Google OAuth2 token endpoint it depends on.

* ``POST /token``: checks the RS256 service-account assertion (its signature only with
  ``options.public_key_pem``); answers an access token or Google's ``invalid_grant``. Not rate
  limited, not recorded.
* ``POST /v1/projects/{project}/messages:send`` with an issued token: ``{"name": ...}``; errors in the
  google.rpc shape with a ``google.firebase.fcm.v1.FcmError`` detail.
* idempotency keys: ``Idempotency-Key``, else ``message.data.notification_id`` / ``idempotency_key``."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

from provider_sandbox.auth import InvalidJwt, inspect_jwt, parse_bearer
from provider_sandbox.base import Call, ProviderSandbox, Reject, retry_after_seconds
from provider_sandbox.faults import BAD_REQUEST, INVALID_TOKEN, Fault
from provider_sandbox.messages import Request, Response

CONTENT_TYPE = "application/json; charset=UTF-8"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
_TARGETS = ("token", "topic", "condition")
REALM = 'Bearer realm="https://accounts.google.com/"'


def google_error(
    code: int,
    status: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return Response.json(code, {"error": error}, headers or [], content_type=CONTENT_TYPE)


def fcm_error(code: int, status: str, message: str, error_code: str, **kwargs: Any) -> Response:
    return google_error(code, status, message, [{"@type": FCM_ERROR, "errorCode": error_code}], **kwargs)


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    return Response.json(status, {"error": error, "error_description": description}, content_type=CONTENT_TYPE)


class FcmSandbox(ProviderSandbox):
    """FCM v1 ``messages:send`` and the OAuth2 JWT-bearer token exchange."""

    name = "fcm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens: dict[str, float] = {}  # access token -> monotonic expiry (survives /reset)

    async def handle(self, request: Request) -> Response:
        if request.path == "/token":
            return self.issue_token(request)
        return await super().handle(request)

    # ------------------------------------------------------------------ OAuth2
    def issue_token(self, request: Request) -> Response:
        if request.method != "POST":
            return _oauth_error("invalid_request", "Only POST is supported", 405)
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        if form.get("grant_type") != JWT_BEARER:
            self.counters.extra["token_errors"] += 1
            return _oauth_error("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}")
        assertion = form.get("assertion", "")
        try:
            _header, claims = inspect_jwt(assertion, "RS256", self.config.options.get("public_key_pem"))
        except InvalidJwt:
            self.counters.extra["token_errors"] += 1
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        problem = self._claims_problem(claims)
        if problem:
            self.counters.extra["token_errors"] += 1
            return _oauth_error("invalid_grant", problem)
        ttl = int(self.config.options.get("token_ttl") or 3600)
        token = "ya29.sandbox." + secrets.token_urlsafe(32)
        now = time.monotonic()
        self.tokens = {t: exp for t, exp in self.tokens.items() if exp > now}
        self.tokens[token] = now + ttl
        self.counters.extra["tokens_issued"] += 1
        return Response.json(
            200, {"access_token": token, "expires_in": ttl - 1, "token_type": "Bearer"}, content_type=CONTENT_TYPE
        )

    @staticmethod
    def _claims_problem(claims: dict[str, Any]) -> str | None:
        for claim in ("iss", "aud", "iat", "exp"):
            if claim not in claims:
                return f"Invalid JWT: missing required claim '{claim}'."
        if "scope" not in claims and "target_audience" not in claims:
            return "Invalid JWT: No scope or target_audience claim."
        try:
            iat, exp = float(claims["iat"]), float(claims["exp"])
        except (TypeError, ValueError):
            return "Invalid JWT: iat and exp must be numbers."
        now = time.time()
        if exp - iat > 3600 or exp <= iat or iat > now + 300 or exp < now - 300:
            return (
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim."
            )
        return None

    # ------------------------------------------------------------------ messages:send
    def parse(self, request: Request, t_mono: float, t_wall: float) -> Call:
        match = _SEND_PATH.match(request.path)
        if match is None:
            raise Reject(google_error(404, "NOT_FOUND", "Method not found."), "not_found")
        if request.method != "POST":
            raise Reject(google_error(405, "METHOD_NOT_ALLOWED", "Method not allowed."), "not_found")
        self._authenticate(request)
        project = match.group(1)
        expected = self.config.options.get("project")
        if expected and project != expected:
            raise Reject(fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"), "auth")
        try:
            body = request.json()
        except ValueError:
            raise Reject(
                google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unexpected token."),
                "validation",
            ) from None
        message = body.get("message") if isinstance(body, dict) else None
        call = Call(request=request, t_mono=t_mono, t_wall=t_wall, data=body)
        call.extra["project"] = project
        if isinstance(message, dict):
            for target in _TARGETS:
                value = message.get(target)
                if isinstance(value, str) and value:
                    call.recipients = [value if target == "token" else f"{target}:{value}"]
                    break
            call.keys = self._keys(request, message)
        return call

    def _authenticate(self, request: Request) -> None:
        header = request.header("authorization")
        token = parse_bearer(header)
        if token is None:
            raise Reject(
                google_error(
                    401,
                    "UNAUTHENTICATED",
                    "Request is missing required authentication credential. Expected OAuth 2 access token, "
                    "login cookie or other valid authentication credential. "
                    "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                    headers=[("WWW-Authenticate", REALM)],
                ),
                "auth",
            )
        expiry = self.tokens.get(token)
        static = self.config.options.get("static_tokens") or []
        if token not in static and (expiry is None or expiry <= time.monotonic()):
            raise Reject(
                google_error(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                    "or other valid authentication credential. "
                    "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                    headers=[("WWW-Authenticate", f'{REALM}, error="invalid_token"')],
                ),
                "auth",
            )

    @staticmethod
    def _keys(request: Request, message: dict[str, Any]) -> list[str]:
        keys = [request.header("idempotency-key") or ""]
        data = message.get("data")
        if isinstance(data, dict):
            for name in ("notification_id", "idempotency_key"):
                if isinstance(data.get(name), str) and data[name]:
                    keys.append(data[name])
                    break
        return [k for k in dict.fromkeys(keys) if k]

    def validate(self, call: Call) -> None:
        body = call.data
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict):
            raise Reject(self._field_violation("message", "Required field 'message' is missing."), "validation")
        targets = [t for t in _TARGETS if message.get(t)]
        if len(targets) != 1:
            raise Reject(
                fcm_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT"),
                "validation",
            )
        data = message.get("data")
        if data is not None:
            if not isinstance(data, dict):
                raise Reject(self._field_violation("message.data", "Invalid value at 'message.data'"), "validation")
            for index, (key, value) in enumerate(data.items()):
                if not isinstance(value, str):
                    text = f"Invalid value at 'message.data[{index}].value' (TYPE_STRING), {value}"
                    raise Reject(self._field_violation(f"message.data[{index}].value", text), "validation")
                if key in ("from", "gcm") or key.startswith("google"):
                    raise Reject(
                        fcm_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT"),
                        "validation",
                    )

    @staticmethod
    def _field_violation(field: str, description: str) -> Response:
        detail = {"@type": BAD_REQUEST_TYPE, "fieldViolations": [{"field": field, "description": description}]}
        return google_error(400, "INVALID_ARGUMENT", description, [detail])

    def accept(self, call: Call) -> tuple[Response, str | None]:
        project = call.extra["project"]
        if call.data.get("validate_only"):
            self.counters.extra["validate_only"] += 1
            return Response.json(
                200, {"name": f"projects/{project}/messages/fake_message_id"}, content_type=CONTENT_TYPE
            ), None
        message_id = f"0:{int(call.t_wall * 1_000_000)}%{secrets.token_hex(8)}"
        name = f"projects/{project}/messages/{message_id}"
        return Response.json(200, {"name": name}, content_type=CONTENT_TYPE), name

    def record(self, call: Call, provider_id: str | None, meta: dict[str, Any] | None = None) -> None:
        if provider_id is None:  # validate_only: FCM does not send anything
            return
        super().record(call, provider_id, meta)

    def rate_limited(self, call: Call | None, retry_after: float) -> Response:
        project = call.extra.get("project", "") if call else ""
        return fcm_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute' of service "
            f"'fcm.googleapis.com' for consumer 'project_number:{project}'.",
            "QUOTA_EXCEEDED",
            headers=[("Retry-After", retry_after_seconds(retry_after))],
        )

    def fault_response(self, fault: Fault, call: Call) -> Response:
        if fault.kind == BAD_REQUEST:
            return fcm_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
            )
        if fault.kind == INVALID_TOKEN:
            return fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        if fault.status == 500:
            return fcm_error(500, "INTERNAL", "Internal error encountered.", "INTERNAL")
        return fcm_error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE")

    def extra_stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"live_tokens": sum(1 for exp in self.tokens.values() if exp > now)}
