"""Webhook receiver sandbox: accepts ``POST`` on any path, verifying Standard Webhooks signatures.

* with ``options.secret`` (or per-path ``options.endpoint_secrets``): ``webhook-id``,
  ``webhook-timestamp`` (within ``options.tolerance_s``) and a verifying ``webhook-signature``, else 401
* success: ``options.success_status`` (204); rate limited: 503 + ``Retry-After``
* the triggers read the request path (``POST /hooks/fail5xx-2/tenant-1`` fails twice); ``busy-S``
  makes an endpoint answer 429 + ``Retry-After`` for S seconds from its first request
* idempotency key: ``webhook-id``"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time

from provider_sandbox.base import Call, ProviderSandbox, Reject, retry_after_seconds
from provider_sandbox.faults import BAD_REQUEST, INVALID_TOKEN, Fault
from provider_sandbox.messages import Request, Response

SECRET_PREFIX = "whsec_"  # noqa: S105 - the secret's prefix, not a secret
_BUSY = re.compile(r"busy-(\d+)", re.IGNORECASE)


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response.json(status, {"error": message}, headers or [])


def signature_problem(
    secret: str | list[str], request: Request, tolerance_s: float, now: float | None = None
) -> str | None:
    """Why the Standard Webhooks signature of ``request`` is not valid for ``secret`` (or for any of
    several), or ``None`` if it is."""
    msg_id = request.header("webhook-id")
    timestamp = request.header("webhook-timestamp")
    signatures = request.header("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        return "missing required headers"
    try:
        sent_at = int(timestamp)
    except ValueError:
        return "invalid signature headers"
    now = time.time() if now is None else now
    if sent_at < now - tolerance_s:
        return "message timestamp too old"
    if sent_at > now + tolerance_s:
        return "message timestamp too new"
    signed = f"{msg_id}.{timestamp}.".encode() + request.body
    for one in [secret] if isinstance(secret, str) else secret:
        raw_secret = one[len(SECRET_PREFIX) :] if one.startswith(SECRET_PREFIX) else one
        try:
            key = base64.b64decode(raw_secret + "==")
        except (binascii.Error, ValueError):
            return "sandbox secret is not base64"
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
        for candidate in signatures.split():
            version, _, value = candidate.partition(",")
            if version == "v1" and hmac.compare_digest(value.encode(), expected):
                return None
    return "no matching signature found"


def endpoint_secret(options: dict, path: str) -> str | list[str] | None:
    """The secret(s) a request to ``path`` must be signed with (``endpoint_secrets``, else ``secret``)."""
    prefixes = [p for p in (options.get("endpoint_secrets") or {}) if path.startswith(p)]
    if prefixes:
        return options["endpoint_secrets"][max(prefixes, key=len)]
    return options.get("secret")


class WebhookSandbox(ProviderSandbox):
    """A webhook endpoint that records deliveries."""

    name = "webhook"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.busy_until: dict[str, float] = {}  # busy-S endpoints: when their window ends (monotonic)

    def on_reset(self) -> None:
        self.busy_until.clear()

    def parse(self, request: Request, t_mono: float, t_wall: float) -> Call:
        if request.method != "POST":
            raise Reject(_error(405, "method not allowed"), "not_found")
        secret = endpoint_secret(self.config.options, request.path)
        if secret:
            problem = signature_problem(secret, request, float(self.config.options.get("tolerance_s") or 300))
            if problem:
                raise Reject(_error(401, problem), "signature")
        msg_id = request.header("webhook-id")
        return Call(
            request=request,
            t_mono=t_mono,
            t_wall=t_wall,
            recipients=[request.path],
            keys=[msg_id] if msg_id else [],
            extra={
                "meta": {
                    "webhook-timestamp": request.header("webhook-timestamp"),
                    "webhook-signature": request.header("webhook-signature"),
                }
            },
        )

    def validate(self, call: Call) -> None:
        """A ``busy-S`` endpoint answers 429 + Retry-After for S seconds from its first request."""
        path = call.recipients[0]
        match = _BUSY.search(path)
        if match is None:
            return
        until = self.busy_until.setdefault(path, call.t_mono + int(match.group(1)))
        left = until - time.monotonic()
        if left > 0:
            headers = (
                [("Retry-After", str(max(1, math.ceil(left))))]
                if self.config.options.get("busy_retry_after", True)
                else []
            )
            raise Reject(_error(429, "busy", headers), "busy")

    def accept(self, call: Call) -> tuple[Response, str | None]:
        status = int(self.config.options.get("success_status") or 204)
        return Response.empty(status), call.keys[0] if call.keys else None

    def rate_limited(self, call: Call | None, retry_after: float) -> Response:
        return _error(503, "rate limited", [("Retry-After", retry_after_seconds(retry_after))])

    def fault_response(self, fault: Fault, call: Call) -> Response:
        if fault.kind == BAD_REQUEST:
            return _error(400, "bad request")
        if fault.kind == INVALID_TOKEN:
            return _error(410, "endpoint gone")
        if fault.status == 500:
            return _error(500, "internal server error")
        return _error(503, "service unavailable")
