"""Twilio Programmable Messaging sandbox: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``.

* auth: HTTP Basic ``AccountSid:AuthToken`` (or an ``SK...`` key) of the path's account, else 401 20003
* success: 201 with a Message resource (``status`` ``queued``, or ``accepted`` with only a
  ``MessagingServiceSid``); errors in Twilio's ``{"code", "message", "more_info", "status"}`` body
* idempotency keys: ``Idempotency-Key`` / ``I-Twilio-Idempotency-Token``, the ``StatusCallback``'s
  ``notification_id``, else a token in ``Body`` (``options.body_key_pattern``)"""

from __future__ import annotations

import email.utils
import math
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from provider_sandbox.auth import parse_basic
from provider_sandbox.base import Call, ProviderSandbox, Reject, retry_after_seconds
from provider_sandbox.faults import BAD_REQUEST, INVALID_TOKEN, Fault
from provider_sandbox.messages import Request, Response

API_VERSION = "2010-04-01"
CONTENT_TYPE = "application/json; charset=utf-8"
_PATH = re.compile(r"^/2010-04-01/Accounts/([^/]+)/Messages\.json$")
_PHONE_LIKE = re.compile(r"^(?:[a-z]+:)?\+?\d")


def twilio_error(status: int, code: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return Response.json(status, body, headers or [], content_type=CONTENT_TYPE)


def _form(request: Request) -> dict[str, Any]:
    parsed = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: (v[0] if len(v) == 1 else v) for k, v in parsed.items()}


def _segments(body: str) -> int:
    if not body:
        return 0
    return 1 if len(body) <= 160 else math.ceil(len(body) / 153)


class TwilioSandbox(ProviderSandbox):
    """Twilio Messages API (create) with Twilio's resource and error formats."""

    name = "twilio"

    def parse(self, request: Request, t_mono: float, t_wall: float) -> Call:
        match = _PATH.match(request.path)
        if match is None:
            raise Reject(twilio_error(404, 20404, f"The requested resource {request.path} was not found"), "not_found")
        if request.method != "POST":
            raise Reject(twilio_error(405, 20004, "Method not allowed"), "not_found")
        account = match.group(1)
        credentials = parse_basic(request.header("authorization"))
        if not self._authorized(account, credentials):
            raise Reject(
                twilio_error(401, 20003, "Authenticate", [("WWW-Authenticate", 'Basic realm="Twilio API"')]), "auth"
            )
        form = _form(request)
        to = form.get("To")
        call = Call(request=request, t_mono=t_mono, t_wall=t_wall, data=form)
        call.recipients = [to] if isinstance(to, str) and to else []
        call.keys = self._keys(request, form)
        call.extra["account"] = account
        return call

    def _authorized(self, account: str, credentials: tuple[str, str] | None) -> bool:
        if credentials is None:
            return False
        user, password = credentials
        accounts: dict[str, str] = self.config.options.get("accounts") or {}
        if accounts:
            return user == account and accounts.get(account) == password
        return bool(password) and (user == account or user.startswith("SK"))

    def _keys(self, request: Request, form: dict[str, Any]) -> list[str]:
        keys = [h for h in (request.header("idempotency-key"), request.header("i-twilio-idempotency-token")) if h]
        callback = form.get("StatusCallback")
        if isinstance(callback, str) and callback:
            query = parse_qs(urlsplit(callback).query)
            for name in ("notification_id", "idempotency_key"):
                if query.get(name):
                    keys.append(query[name][0])
                    break
        body = form.get("Body")
        pattern = self.config.options.get("body_key_pattern")
        if not keys and isinstance(body, str) and pattern:
            found = re.search(pattern, body)
            if found:
                keys.append(found.group(1))
        return list(dict.fromkeys(keys))

    def validate(self, call: Call) -> None:
        form: dict[str, Any] = call.data
        to = form.get("To")
        if not to:
            raise Reject(twilio_error(400, 21604, "A 'To' phone number is required."), "validation")
        if not isinstance(to, str) or not _PHONE_LIKE.match(to) or sum(c.isdigit() for c in to) < 7:
            raise Reject(twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number."), "validation")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            raise Reject(twilio_error(400, 21603, "A 'From' phone number is required."), "validation")
        if not form.get("Body") and not form.get("MediaUrl") and not form.get("ContentSid"):
            raise Reject(twilio_error(400, 21602, "Message body is required."), "validation")
        body = form.get("Body")
        if isinstance(body, str) and len(body) > 1600:
            raise Reject(
                twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit."),
                "validation",
            )

    def accept(self, call: Call) -> tuple[Response, str | None]:
        form: dict[str, Any] = call.data
        account = call.extra["account"]
        sid = "SM" + uuid.uuid4().hex
        now = email.utils.format_datetime(datetime.fromtimestamp(call.t_wall, UTC))
        service = form.get("MessagingServiceSid")
        sender = form.get("From")
        media = form.get("MediaUrl")
        body = form.get("Body") or ""
        uri = f"/{API_VERSION}/Accounts/{account}/Messages/{sid}.json"
        resource = {
            "account_sid": account,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender,
            "messaging_service_sid": service,
            "num_media": str(len(media) if isinstance(media, list) else int(bool(media))),
            "num_segments": "0" if service and not sender else str(_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service and not sender else "queued",
            "subresource_uris": {"media": f"/{API_VERSION}/Accounts/{account}/Messages/{sid}/Media.json"},
            "to": form.get("To"),
            "uri": uri,
        }
        return Response.json(201, resource, content_type=CONTENT_TYPE), sid

    def rate_limited(self, call: Call | None, retry_after: float) -> Response:
        return twilio_error(429, 20429, "Too Many Requests", [("Retry-After", retry_after_seconds(retry_after))])

    def fault_response(self, fault: Fault, call: Call) -> Response:
        to = call.data.get("To")
        if fault.kind == BAD_REQUEST:
            return twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if fault.kind == INVALID_TOKEN:
            return twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")
        if fault.status == 500:
            return twilio_error(500, 20500, "Internal Server Error")
        return twilio_error(503, 20503, "Service Unavailable")
