"""Webhook receiver sandbox: accepts ``POST`` on any path, verifying Standard Webhooks signatures.

With ``options.secret`` (``whsec_<base64>``) set, every request must carry ``webhook-id``,
``webhook-timestamp`` (unix seconds, within ``options.tolerance_s``) and ``webhook-signature``
(space-separated ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``); otherwise 401.

Success answers ``options.success_status`` (default 204).  The recipient used for triggers is the
request path (``POST /hooks/fail5xx-2/tenant-1`` fails twice), the idempotency key the ``webhook-id``.
Rate limiting answers ``503`` + ``Retry-After``; ``invalid`` -> 400; ``unregistered`` -> 410 Gone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

from provider_sandbox.base import Call, ProviderSandbox, Reject, retry_after_seconds
from provider_sandbox.faults import BAD_REQUEST, INVALID_TOKEN, Fault
from provider_sandbox.messages import Request, Response

SECRET_PREFIX = "whsec_"  # noqa: S105 - the secret's prefix, not a secret


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response.json(status, {"error": message}, headers or [])


def signature_problem(secret: str, request: Request, tolerance_s: float, now: float | None = None) -> str | None:
    """Why the Standard Webhooks signature of ``request`` is not valid, or ``None`` if it is."""
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
    raw_secret = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw_secret + "==")
    except (binascii.Error, ValueError):
        return "sandbox secret is not base64"
    signed = f"{msg_id}.{timestamp}.".encode() + request.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return None
    return "no matching signature found"


class WebhookSandbox(ProviderSandbox):
    """A webhook endpoint that records deliveries."""

    name = "webhook"

    def parse(self, request: Request, t_mono: float, t_wall: float) -> Call:
        if request.method != "POST":
            raise Reject(_error(405, "method not allowed"), "not_found")
        secret = self.config.options.get("secret")
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
            extra={"meta": {"webhook-timestamp": request.header("webhook-timestamp")}},
        )

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
