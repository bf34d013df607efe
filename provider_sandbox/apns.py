"""APNs provider API sandbox: HTTP/2 (cleartext, prior knowledge) ``POST /3/device/{token}``.

* the ES256 provider token (``kid``, ``iss``, ``iat`` under an hour old; the signature only with
  ``options.public_key_pem``), else 403 with APNs' reason; the ``apns-*`` headers validated as APNs does
* success: 200, empty body, ``apns-id``; errors: ``:status`` + ``{"reason": ...}`` (410 with
  ``"timestamp"``)
* idempotency key: the client's ``apns-id``. HTTP/1.1 serves only ``/_sandbox/`` (505 otherwise)"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from provider_sandbox.auth import InvalidJwt, inspect_jwt
from provider_sandbox.base import Call, ProviderSandbox, Reject
from provider_sandbox.faults import BAD_REQUEST, INVALID_TOKEN, Fault
from provider_sandbox.messages import Request, Response

_PATH = re.compile(r"^/3/device/([^/]*)$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
        "widgets",
        "controls",
    }
)
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120


def apns_error(status: int, reason: str, **extra: Any) -> Response:
    return Response.json(status, {"reason": reason, **extra})


class ApnsSandbox(ProviderSandbox):
    """APNs token-based provider API over HTTP/2."""

    name = "apns"
    http2 = True

    def parse(self, request: Request, t_mono: float, t_wall: float) -> Call:
        if request.http_version != "2":
            raise Reject(apns_error(505, "HTTP/2 prior knowledge required"), "protocol")
        match = _PATH.match(request.path)
        if match is None:
            raise Reject(apns_error(404, "BadPath"), "not_found")
        if request.method != "POST":
            raise Reject(apns_error(405, "MethodNotAllowed"), "not_found")
        call = Call(request=request, t_mono=t_mono, t_wall=t_wall)
        apns_id = request.header("apns-id")
        call.extra["client_apns_id"] = apns_id
        call.extra["apns_id"] = apns_id if apns_id and _UUID.match(apns_id) else str(uuid.uuid4()).upper()
        self._authenticate(request)
        token = match.group(1)
        call.recipients = [token] if token else []
        call.keys = [apns_id] if apns_id else []
        call.extra["meta"] = {k: v for k, v in request.headers.items() if k.startswith("apns-")} | {
            "topic": request.header("apns-topic")
        }
        return call

    def _authenticate(self, request: Request) -> None:
        header = request.header("authorization") or ""
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Reject(apns_error(403, "MissingProviderToken"), "auth")
        options = self.config.options
        try:
            jwt_header, claims = inspect_jwt(token.strip(), "ES256", options.get("public_key_pem"))
        except InvalidJwt:
            raise Reject(apns_error(403, "InvalidProviderToken"), "auth") from None
        iss, iat, kid = claims.get("iss"), claims.get("iat"), jwt_header.get("kid")
        if not iss or not kid or not isinstance(iat, int | float):
            raise Reject(apns_error(403, "InvalidProviderToken"), "auth")
        if (options.get("team_id") and iss != options["team_id"]) or (
            options.get("key_id") and kid != options["key_id"]
        ):
            raise Reject(apns_error(403, "InvalidProviderToken"), "auth")
        now = time.time()
        if iat > now + 300:
            raise Reject(apns_error(403, "InvalidProviderToken"), "auth")
        if now - iat > float(options.get("token_max_age") or 3600):
            raise Reject(apns_error(403, "ExpiredProviderToken"), "auth")

    def validate(self, call: Call) -> None:
        request = call.request
        if not call.recipients:
            raise Reject(apns_error(400, "MissingDeviceToken"), "validation")
        apns_id = call.extra["client_apns_id"]
        if apns_id is not None and not _UUID.match(apns_id):
            raise Reject(apns_error(400, "BadMessageId"), "validation")
        topic = request.header("apns-topic")
        if not topic:
            raise Reject(apns_error(400, "MissingTopic"), "validation")
        topics = self.config.options.get("topics") or []
        if topics and topic not in topics:
            raise Reject(apns_error(400, "TopicDisallowed"), "validation")
        push_type = request.header("apns-push-type")
        if push_type is not None and push_type not in PUSH_TYPES:
            raise Reject(apns_error(400, "InvalidPushType"), "validation")
        priority = request.header("apns-priority")
        if priority is not None and priority not in ("1", "5", "10"):
            raise Reject(apns_error(400, "BadPriority"), "validation")
        expiration = request.header("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            raise Reject(apns_error(400, "BadExpirationDate"), "validation")
        collapse = request.header("apns-collapse-id")
        if collapse is not None and len(collapse.encode()) > 64:
            raise Reject(apns_error(400, "BadCollapseId"), "validation")
        if not request.body:
            raise Reject(apns_error(400, "PayloadEmpty"), "validation")
        limit = MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD
        if len(request.body) > limit:
            raise Reject(apns_error(413, "PayloadTooLarge"), "validation")

    def accept(self, call: Call) -> tuple[Response, str | None]:
        return Response.empty(200), call.extra["apns_id"]

    def rate_limited(self, call: Call | None, retry_after: float) -> Response:
        return apns_error(429, "TooManyRequests")

    def fault_response(self, fault: Fault, call: Call) -> Response:
        if fault.kind == BAD_REQUEST:
            return apns_error(400, "BadDeviceToken")
        if fault.kind == INVALID_TOKEN:
            return apns_error(410, "Unregistered", timestamp=int(time.time() * 1000))
        if fault.status == 500:
            return apns_error(500, "InternalServerError")
        return apns_error(503, "ServiceUnavailable")

    def finish(self, response: Response, call: Call | None) -> Response:
        if call is not None and "apns_id" in call.extra:
            response.headers.append(("apns-id", call.extra["apns_id"]))
        return response
