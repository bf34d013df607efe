"""Per-provider classification tables: (status, headers, body) -> SendResult, pure and clock-injectable.

One function per provider, after the provider's public documentation. Each takes the HTTP status, the
response headers (any case-insensitive or plain mapping) and the body (bytes, text or parsed JSON),
and returns a :class:`SendResult`; none does I/O, so each row of each table has a unit test.
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Mapping
from typing import Any

from notifications.providers.http import body_text, header_value, json_body, parse_retry_after
from notifications.providers.results import SendOutcome, SendResult, truncate

Headers = Mapping[str, str] | None
Body = bytes | str | Mapping[str, Any] | None

# ---------------------------------------------------------------------------------------------- generic HTTP


def classify_http_status(
    status: int,
    headers: Headers = None,
    body: Body = None,
    *,
    provider: str,
    now: float | None = None,
    message_id: str = "",
) -> SendResult:
    """The fallback by HTTP semantics (used for anymail ESPs without a table of their own)."""
    text = body_text(body)
    retry_after = parse_retry_after(header_value(headers, "Retry-After"), now=now)
    if 200 <= status < 300:
        return SendResult(SendOutcome.SENT, provider, provider_message_id=message_id, status_code=status)
    if status == 429:
        return SendResult(SendOutcome.RATE_LIMITED, provider, status_code=status, message=text, retry_after=retry_after)
    if status in (401, 403):
        return SendResult(
            SendOutcome.CONFIG_ERROR, provider, status_code=status, error_code=f"http_{status}", message=text
        )
    if status == 408 or status >= 500:
        return SendResult(
            SendOutcome.TRANSIENT,
            provider,
            status_code=status,
            error_code=f"http_{status}",
            message=text,
            retry_after=retry_after,
        )
    return SendResult(SendOutcome.PERMANENT, provider, status_code=status, error_code=f"http_{status}", message=text)


# ---------------------------------------------------------------------------------------------- SendGrid

# An error naming a recipient address: "personalizations.0.to.0.email", "personalizations.1.cc", ...
_SENDGRID_ADDRESS_FIELD = re.compile(r"^personalizations(\.\d+)?\.(to|cc|bcc)(\.\d+)?(\.email)?$")


def _sendgrid_errors(body: Body) -> list[dict[str, Any]]:
    data = json_body(body)
    errors = data.get("errors") if isinstance(data, Mapping) else None
    return [e for e in errors if isinstance(e, Mapping)] if isinstance(errors, list) else []


def classify_sendgrid_response(
    status: int, headers: Headers = None, body: Body = None, *, now: float | None = None, provider: str = "sendgrid"
) -> SendResult:
    """SendGrid v3 ``mail/send``.

    202 sent (``X-Message-Id``); 429 rate limited until ``X-RateLimit-Reset`` (epoch seconds) - now;
    5xx transient; 401/403 config (bad or under-privileged API key: every send would fail); 400 naming
    a ``personalizations.N.to.M.email`` field invalid contact; any other 4xx permanent.
    """
    if 200 <= status < 300:
        return SendResult(
            SendOutcome.SENT,
            provider,
            provider_message_id=header_value(headers, "X-Message-Id") or "",
            status_code=status,
        )
    errors = _sendgrid_errors(body)
    text = "; ".join(str(e.get("message") or "") for e in errors if e.get("message")) or body_text(body)
    fields = [str(e.get("field") or "") for e in errors]
    if status == 429:
        now = time.time() if now is None else now
        reset = header_value(headers, "X-RateLimit-Reset")
        retry_after: float | None = None
        if reset:
            try:
                retry_after = max(0.0, float(reset) - now)
            except ValueError:
                retry_after = None
        if retry_after is None:
            retry_after = parse_retry_after(header_value(headers, "Retry-After"), now=now)
        return SendResult(
            SendOutcome.RATE_LIMITED,
            provider,
            status_code=status,
            error_code="too_many_requests",
            message=truncate(text),
            retry_after=retry_after,
        )
    if status >= 500:
        return SendResult(
            SendOutcome.TRANSIENT,
            provider,
            status_code=status,
            error_code=f"http_{status}",
            message=truncate(text),
            retry_after=parse_retry_after(header_value(headers, "Retry-After"), now=now),
        )
    if status in (401, 403):
        return SendResult(
            SendOutcome.CONFIG_ERROR, provider, status_code=status, error_code=f"http_{status}", message=truncate(text)
        )
    address_fields = [f for f in fields if _SENDGRID_ADDRESS_FIELD.match(f)]
    if status == 400 and address_fields:
        return SendResult(
            SendOutcome.INVALID_CONTACT,
            provider,
            status_code=status,
            error_code=address_fields[0],
            message=truncate(text),
        )
    code = next((f for f in fields if f), f"http_{status}")
    return SendResult(SendOutcome.PERMANENT, provider, status_code=status, error_code=code, message=truncate(text))


# ---------------------------------------------------------------------------------------------- Twilio

TWILIO_INVALID_CONTACT = frozenset({21211, 21612, 21614, 30006, 21610})  # 21610: recipient replied STOP
TWILIO_TRANSIENT = frozenset({21611, 30001, 30003})  # sender queue full / queue overflow / unreachable
TWILIO_RATE_LIMITED = frozenset({20429})
TWILIO_CONFIG = frozenset({20003})  # "Authenticate": wrong account SID / token


def classify_twilio_response(
    status: int, headers: Headers = None, body: Body = None, *, now: float | None = None, provider: str = "twilio"
) -> SendResult:
    """Twilio Messages API: 201 sent (``sid``); 429/20429 rate limited (``Retry-After``);
    21211/21612/21614/30006 and 21610 (STOP) invalid contact; 21611/30001/30003 transient;
    5xx transient; 401/20003 config; other 4xx permanent. ``error_code`` is Twilio's numeric code.
    """
    data = json_body(body)
    data = data if isinstance(data, Mapping) else {}
    if 200 <= status < 300:
        return SendResult(
            SendOutcome.SENT, provider, provider_message_id=str(data.get("sid") or ""), status_code=status
        )
    code = data.get("code")
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    error_code = str(code) if code is not None else f"http_{status}"
    text = truncate(str(data.get("message") or body_text(body)))
    retry_after = parse_retry_after(header_value(headers, "Retry-After"), now=now)

    def result(outcome: SendOutcome, wait: float | None = None) -> SendResult:
        return SendResult(outcome, provider, status_code=status, error_code=error_code, message=text, retry_after=wait)

    if status == 429 or code in TWILIO_RATE_LIMITED:
        return result(SendOutcome.RATE_LIMITED, retry_after)
    if code in TWILIO_INVALID_CONTACT:
        return result(SendOutcome.INVALID_CONTACT)
    if code in TWILIO_TRANSIENT or status >= 500:
        return result(SendOutcome.TRANSIENT, retry_after)
    if status == 401 or code in TWILIO_CONFIG:
        return result(SendOutcome.CONFIG_ERROR)
    return result(SendOutcome.PERMANENT)


# ---------------------------------------------------------------------------------------------- FCM

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
#: FCM asks for a first back-off of at least a minute after QUOTA_EXCEEDED.
FCM_MIN_QUOTA_BACKOFF = 60.0


def fcm_error_code(body: Body) -> tuple[str, str, str]:
    """``(fcm errorCode, google.rpc status, message)`` of an FCM error body (empty strings if absent)."""
    data = json_body(body)
    error = data.get("error") if isinstance(data, Mapping) else None
    if not isinstance(error, Mapping):
        return "", "", body_text(body)
    fcm_code = ""
    for detail in error.get("details") or []:
        if isinstance(detail, Mapping) and detail.get("@type") == FCM_ERROR_TYPE and detail.get("errorCode"):
            fcm_code = str(detail["errorCode"])
            break
    return fcm_code, str(error.get("status") or ""), truncate(str(error.get("message") or ""))


def classify_fcm_response(
    status: int, headers: Headers = None, body: Body = None, *, now: float | None = None, provider: str = "fcm"
) -> SendResult:
    """FCM HTTP v1 ``messages:send`` for one token.

    200 sent (``name``); UNREGISTERED (404) and SENDER_ID_MISMATCH (403) invalid contact for that token;
    INVALID_ARGUMENT (400) permanent; THIRD_PARTY_AUTH_ERROR (401) and other 401/403 config;
    QUOTA_EXCEEDED (429) rate limited for max(60 s, Retry-After); UNAVAILABLE/INTERNAL (503/500)
    transient honouring Retry-After. ``error_code`` is the FcmError code, else the rpc status.
    """
    if 200 <= status < 300:
        data = json_body(body)
        name = str(data.get("name") or "") if isinstance(data, Mapping) else ""
        return SendResult(SendOutcome.SENT, provider, provider_message_id=name, status_code=status)
    fcm_code, rpc_status, text = fcm_error_code(body)
    error_code = fcm_code or rpc_status or f"http_{status}"
    retry_after = parse_retry_after(header_value(headers, "Retry-After"), now=now)

    def result(outcome: SendOutcome, wait: float | None = None) -> SendResult:
        return SendResult(outcome, provider, status_code=status, error_code=error_code, message=text, retry_after=wait)

    if fcm_code in ("UNREGISTERED", "SENDER_ID_MISMATCH"):
        return result(SendOutcome.INVALID_CONTACT)
    if fcm_code == "QUOTA_EXCEEDED" or status == 429:
        return result(SendOutcome.RATE_LIMITED, max(FCM_MIN_QUOTA_BACKOFF, retry_after or 0.0))
    if fcm_code in ("UNAVAILABLE", "INTERNAL") or status >= 500:
        return result(SendOutcome.TRANSIENT, retry_after)
    if fcm_code == "THIRD_PARTY_AUTH_ERROR" or status in (401, 403):
        return result(SendOutcome.CONFIG_ERROR)
    if status == 404:
        return result(SendOutcome.INVALID_CONTACT)
    return result(SendOutcome.PERMANENT)


# ---------------------------------------------------------------------------------------------- APNs

APNS_DEAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})
#: 400 reasons that mean our topic configuration is wrong (every push would fail), not this payload.
APNS_CONFIG_400_REASONS = frozenset({"MissingTopic", "TopicDisallowed", "BadTopic"})
APNS_PROVIDER_TOKEN_REASONS = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})


def apns_reason(body: Body) -> tuple[str, int | None]:
    """``(reason, timestamp_ms)`` of an APNs error body."""
    data = json_body(body)
    if not isinstance(data, Mapping):
        return "", None
    stamp = data.get("timestamp")
    return str(data.get("reason") or ""), int(stamp) if isinstance(stamp, int | float) else None


def classify_apns_response(
    status: int, headers: Headers = None, body: Body = None, *, now: float | None = None, provider: str = "apns"
) -> SendResult:
    """APNs provider API for one device token.

    200 sent (``apns-id``); 400 BadDeviceToken/DeviceTokenNotForTopic and 410 Unregistered invalid
    contact; 400 topic reasons and 403 (provider token / certificate) config; other 400, 405 and 413
    permanent; 429 rate limited (per token); 500/503 transient. ``error_code`` is the ``reason``.
    (The adapter refreshes its JWT and retries once on Expired/InvalidProviderToken before this
    config error stands.)
    """
    if status == 200:
        return SendResult(
            SendOutcome.SENT, provider, provider_message_id=header_value(headers, "apns-id") or "", status_code=status
        )
    reason, stamp = apns_reason(body)
    error_code = reason or f"http_{status}"
    text = reason or body_text(body)
    if status == 410 and stamp is not None:
        text = f"{text} (token invalid since {stamp} ms)"
    retry_after = parse_retry_after(header_value(headers, "Retry-After"), now=now)

    def result(outcome: SendOutcome, wait: float | None = None) -> SendResult:
        return SendResult(outcome, provider, status_code=status, error_code=error_code, message=text, retry_after=wait)

    if status == 410 or (status == 400 and reason in APNS_DEAD_TOKEN_REASONS):
        return result(SendOutcome.INVALID_CONTACT)
    if status == 400 and reason in APNS_CONFIG_400_REASONS:
        return result(SendOutcome.CONFIG_ERROR)
    if status == 429:
        return result(SendOutcome.RATE_LIMITED, retry_after)
    if status >= 500:
        return result(SendOutcome.TRANSIENT, retry_after)
    if status == 403:
        return result(SendOutcome.CONFIG_ERROR)
    return result(SendOutcome.PERMANENT)


# ---------------------------------------------------------------------------------------------- webhooks


def classify_webhook_response(
    status: int,
    headers: Headers = None,
    body: Body = None,
    *,
    now: float | None = None,
    provider: str = "webhook",
    message_id: str = "",
) -> SendResult:
    """A Standard Webhooks receiver (Hermes' contract): 2xx sent; 503 + Retry-After (and 429) rate
    limited: back-pressure for that endpoint only; other 5xx and 408 transient; 410 invalid contact
    (the endpoint is gone); 3xx (redirects are not followed) and other 4xx permanent.
    """
    if 200 <= status < 300:
        return SendResult(SendOutcome.SENT, provider, provider_message_id=message_id, status_code=status)
    text = body_text(body)
    retry_after = parse_retry_after(header_value(headers, "Retry-After"), now=now)

    def result(outcome: SendOutcome, code: str, wait: float | None = None) -> SendResult:
        return SendResult(outcome, provider, status_code=status, error_code=code, message=text, retry_after=wait)

    if (status == 503 and retry_after is not None) or status == 429:
        return result(SendOutcome.RATE_LIMITED, "backpressure", retry_after)
    if status >= 500 or status == 408:
        return result(SendOutcome.TRANSIENT, f"http_{status}", retry_after)
    if status == 410:
        return result(SendOutcome.INVALID_CONTACT, "gone")
    return result(SendOutcome.PERMANENT, f"http_{status}")


# ---------------------------------------------------------------------------------------------- SMTP

_SMTP_THROTTLE = re.compile(r"\b4\.7\.1\b.*\b(rate|limit|too many)|\b(rate limit|too many)", re.IGNORECASE)


def classify_smtp_reply(code: int, text: str | bytes, *, provider: str = "smtp", stage: str = "") -> SendResult:
    """One refusing SMTP reply: 5xx on RCPT invalid contact (550/551/553 mailbox or address), other
    5xx permanent, 4xx transient unless it says it is a rate limit (451 4.7.1 ... rate limit),
    then rate limited. ``stage`` (``rcpt``/``mail``/``data``) says where it happened.
    """
    reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    message = truncate(f"{code} {reply}".strip())
    error_code = f"smtp_{code}"

    def result(outcome: SendOutcome) -> SendResult:
        return SendResult(outcome, provider, status_code=code, error_code=error_code, message=message)

    if 400 <= code < 500:
        return result(SendOutcome.RATE_LIMITED if _SMTP_THROTTLE.search(reply) else SendOutcome.TRANSIENT)
    if stage == "rcpt" and code in (550, 551, 553):
        return result(SendOutcome.INVALID_CONTACT)
    if code == 535 or code == 530:  # authentication failed / required: our credentials
        return result(SendOutcome.CONFIG_ERROR)
    return result(SendOutcome.PERMANENT)


def classify_smtp_exception(exc: BaseException, *, provider: str = "smtp") -> SendResult | None:
    """Map an ``smtplib``/socket exception onto a result; None if it is not an SMTP or network error."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = [(int(code), text) for code, text in exc.recipients.values()]
        if not replies:
            return SendResult(SendOutcome.PERMANENT, provider, error_code="smtp_recipients_refused", message=str(exc))
        # A single recipient per message here; with several, the mildest reply decides (retry beats DLQ).
        results = [classify_smtp_reply(code, text, provider=provider, stage="rcpt") for code, text in replies]
        order = (SendOutcome.RATE_LIMITED, SendOutcome.TRANSIENT, SendOutcome.PERMANENT, SendOutcome.INVALID_CONTACT)
        return min(results, key=lambda r: order.index(r.outcome) if r.outcome in order else len(order))
    if isinstance(exc, smtplib.SMTPSenderRefused):
        return classify_smtp_reply(exc.smtp_code, exc.smtp_error, provider=provider, stage="mail")
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return SendResult(
            SendOutcome.CONFIG_ERROR, provider, status_code=exc.smtp_code, error_code="smtp_auth", message=str(exc)
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError):
        return SendResult(SendOutcome.TRANSIENT, provider, error_code="smtp_disconnected", message=truncate(str(exc)))
    if isinstance(exc, smtplib.SMTPResponseException):  # SMTPDataError, SMTPHeloError, ...
        stage = "data" if isinstance(exc, smtplib.SMTPDataError) else ""
        return classify_smtp_reply(exc.smtp_code, exc.smtp_error, provider=provider, stage=stage)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return SendResult(SendOutcome.CONFIG_ERROR, provider, error_code="smtp_not_supported", message=str(exc))
    if isinstance(exc, smtplib.SMTPException):
        return SendResult(SendOutcome.TRANSIENT, provider, error_code="smtp_error", message=truncate(str(exc)))
    if isinstance(exc, TimeoutError):
        return SendResult(
            SendOutcome.TRANSIENT, provider, error_code="timeout", message=truncate(str(exc) or "timeout")
        )
    if isinstance(exc, OSError):  # ConnectionRefusedError, socket.gaierror, ssl errors, ...
        return SendResult(
            SendOutcome.TRANSIENT, provider, error_code="connect_error", message=truncate(str(exc) or repr(exc))
        )
    return None
