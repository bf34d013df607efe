"""SendGrid v3 Mail Send sandbox: ``POST /v3/mail/send``.

* auth ``Authorization: Bearer <api key>`` (any key unless ``options.api_keys``), else 401
* success: 202, empty body, ``X-Message-Id``; ``X-RateLimit-*`` on every response, 429 above the contract
* errors in SendGrid's ``{"errors": [{"message", "field", "help"}]}`` bodies
* idempotency keys: ``Idempotency-Key``, then the ``custom_args`` fields of ``options.idempotency_fields``"""

from __future__ import annotations

import math
import re
import secrets
import time
from typing import Any

from provider_sandbox.auth import parse_bearer
from provider_sandbox.base import Call, ProviderSandbox, Reject
from provider_sandbox.faults import BAD_REQUEST, INVALID_TOKEN, Fault
from provider_sandbox.messages import Request, Response

HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
NOMINAL_LIMIT = 10_000  # reported in X-RateLimit-Limit when no contract rate is configured
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _errors(status: int, *errors: dict[str, Any]) -> Response:
    return Response.json(status, {"errors": list(errors)})


def _error(message: str, field: str | None = None, help_: str | None = None) -> dict[str, Any]:
    return {"message": message, "field": field, "help": help_}


def _message_id() -> str:
    return secrets.token_urlsafe(16)[:22]


class SendGridSandbox(ProviderSandbox):
    """SendGrid v3 ``mail/send`` with SendGrid's status codes, bodies and rate-limit headers."""

    name = "sendgrid"

    def parse(self, request: Request, t_mono: float, t_wall: float) -> Call:
        if request.path.rstrip("/") != "/v3/mail/send":
            raise Reject(_errors(404, {"field": None, "message": "resource not found"}), "not_found")
        if request.method != "POST":
            raise Reject(_errors(405, {"field": None, "message": "method not allowed"}), "not_found")
        key = parse_bearer(request.header("authorization"))
        allowed = self.config.options.get("api_keys") or []
        if key is None or (allowed and key not in allowed):
            raise Reject(
                _errors(401, _error("The provided authorization grant is invalid, expired, or revoked")), "auth"
            )
        try:
            data = request.json()
        except ValueError:
            raise Reject(_errors(400, _error("Bad Request")), "validation") from None
        if not isinstance(data, dict):
            raise Reject(_errors(400, _error("Bad Request")), "validation")
        call = Call(request=request, t_mono=t_mono, t_wall=t_wall, data=data)
        call.recipients, call.extra["locations"] = self._recipients(data)
        call.keys = self._keys(request, data)
        return call

    @staticmethod
    def _recipients(data: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        recipients: list[str] = []
        locations: dict[str, str] = {}
        personalizations = data.get("personalizations")
        if not isinstance(personalizations, list):
            return recipients, locations
        for i, personalization in enumerate(personalizations):
            if not isinstance(personalization, dict):
                continue
            for kind in ("to", "cc", "bcc"):
                for j, entry in enumerate(personalization.get(kind) or []):
                    address = entry.get("email") if isinstance(entry, dict) else None
                    if isinstance(address, str):
                        recipients.append(address)
                        locations.setdefault(address, f"personalizations.{i}.{kind}.{j}.email")
        return recipients, locations

    def _keys(self, request: Request, data: dict[str, Any]) -> list[str]:
        """One key per personalization: the first ``idempotency_fields`` entry present in its custom_args.

        Like SendGrid, a personalization's ``custom_args`` are merged over the top-level ones, so anymail's
        top-level ``metadata`` (``notification_id``) wins over its per-personalization ``anymail_id``.
        """
        keys: list[str] = []
        header = request.header("idempotency-key")
        if header:
            keys.append(header)
        fields = self.config.options.get("idempotency_fields") or []
        top = data.get("custom_args") if isinstance(data.get("custom_args"), dict) else {}
        personalizations = [p for p in data.get("personalizations") or [] if isinstance(p, dict)] or [{}]
        for personalization in personalizations:
            own = personalization.get("custom_args")
            merged = {**top, **(own if isinstance(own, dict) else {})}
            for name in fields:
                if merged.get(name):
                    keys.append(str(merged[name]))
                    break
        return list(dict.fromkeys(keys))

    def validate(self, call: Call) -> None:
        data: dict[str, Any] = call.data
        errors: list[dict[str, Any]] = []
        sender = data.get("from")
        if not isinstance(sender, dict) or not sender.get("email"):
            errors.append(
                _error(
                    "The from object must be provided for every email send. It is an object that requires the "
                    'email parameter, but may also contain a name parameter.  e.g. {"email" : '
                    '"example@example.com"}  or {"email" : "example@example.com", "name" : "Example Recipient"}.',
                    "from.email",
                    f"{HELP}#message.from",
                )
            )
        elif not _EMAIL.match(str(sender["email"])):
            errors.append(
                _error("The from email does not contain a valid address.", "from.email", f"{HELP}#message.from")
            )
        personalizations = data.get("personalizations")
        template = bool(data.get("template_id"))
        if not isinstance(personalizations, list) or not personalizations:
            errors.append(
                _error(
                    "The personalizations field is required and must have at least one personalization.",
                    "personalizations",
                    f"{HELP}#-Personalizations-Errors",
                )
            )
        else:
            for i, personalization in enumerate(personalizations):
                to = personalization.get("to") if isinstance(personalization, dict) else None
                if not isinstance(to, list) or not to:
                    errors.append(
                        _error(
                            "The to array is required for all personalization objects, and must have at least "
                            "one email object with a valid email address.",
                            f"personalizations.{i}.to",
                            f"{HELP}#message.personalizations.to",
                        )
                    )
            for address, location in call.extra["locations"].items():
                if not _EMAIL.match(address):
                    errors.append(
                        _error("Does not contain a valid address.", location, f"{HELP}#message.personalizations.to")
                    )
            all_have_subject = all(isinstance(p, dict) and p.get("subject") for p in personalizations)
            if not data.get("subject") and not template and not all_have_subject:
                errors.append(
                    _error(
                        "The subject is required. You can get around this requirement if you use a template "
                        "with a subject defined or if every personalization has a subject defined.",
                        "subject",
                        f"{HELP}#message.subject",
                    )
                )
        content = data.get("content")
        if not template and not (isinstance(content, list) and content):
            errors.append(
                _error(
                    "Unless a valid template_id is provided, the content parameter is required. There must be at "
                    "least one defined content block. We typically suggest both text/plain and text/html blocks "
                    "are included, but only one block is required.",
                    "content",
                    f"{HELP}#message.content",
                )
            )
        if errors:
            raise Reject(_errors(400, *errors), "validation")

    def accept(self, call: Call) -> tuple[Response, str | None]:
        message_id = _message_id()
        return Response.empty(202, [("X-Message-Id", message_id)]), message_id

    def rate_limited(self, call: Call | None, retry_after: float) -> Response:
        return _errors(429, _error("too many requests"))

    def fault_response(self, fault: Fault, call: Call) -> Response:
        if fault.kind in (BAD_REQUEST, INVALID_TOKEN):
            # SendGrid has no synchronous "unregistered" answer: both map to the invalid-address 400.
            address = fault.recipient or (call.recipients[0] if call.recipients else "")
            location = call.extra["locations"].get(address, "personalizations.0.to.0.email")
            return _errors(
                400, _error("Does not contain a valid address.", location, f"{HELP}#message.personalizations.to")
            )
        if fault.status == 500:
            return _errors(500, _error("internal server error"))
        return _errors(503, _error("service unavailable"))

    def finish(self, response: Response, call: Call | None) -> Response:
        snapshot = self.limiter.snapshot()
        now = time.time()
        if snapshot.limit is None:
            limit, remaining, reset = NOMINAL_LIMIT, NOMINAL_LIMIT, math.ceil(now) + 1
        else:
            limit, remaining = snapshot.limit, snapshot.remaining or 0
            reset = math.ceil(now + snapshot.reset_after)
        response.headers += [
            ("X-RateLimit-Limit", str(limit)),
            ("X-RateLimit-Remaining", str(remaining)),
            ("X-RateLimit-Reset", str(reset)),
        ]
        return response
