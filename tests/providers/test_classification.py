"""Unit tests of every provider classification table and of the shared result/error helpers."""

from __future__ import annotations

import email.utils
import smtplib

import httpx
import pytest

from notifications.providers.classification import (
    classify_apns_response,
    classify_fcm_response,
    classify_http_status,
    classify_sendgrid_response,
    classify_smtp_exception,
    classify_smtp_reply,
    classify_twilio_response,
    classify_webhook_response,
)
from notifications.providers.credentials import Secret
from notifications.providers.errors import (
    ConfigurationError,
    InvalidContactError,
    ProviderError,
    RateLimitedError,
    TransientError,
    result_from_exception,
)
from notifications.providers.http import parse_retry_after
from notifications.providers.message_fields import delivery_key, derived_uuid, devices_for
from notifications.providers.results import SendOutcome, SendResult, aggregate_device_results, combine_results

S = SendOutcome
NOW = 1_700_000_000.0


# ---------------------------------------------------------------------------------------------- SendGrid
def sg_error(message: str, field: str | None = None) -> dict:
    return {"errors": [{"message": message, "field": field, "help": None}]}


def test_sendgrid_202_is_sent_with_x_message_id() -> None:
    result = classify_sendgrid_response(202, {"X-Message-Id": "abc123"}, b"", now=NOW)
    assert (result.outcome, result.provider_message_id, result.status_code) == (S.SENT, "abc123", 202)


def test_sendgrid_429_waits_until_rate_limit_reset_from_injected_clock() -> None:
    headers = {"x-ratelimit-reset": str(int(NOW) + 7), "X-RateLimit-Remaining": "0"}
    result = classify_sendgrid_response(429, headers, sg_error("too many requests"), now=NOW)
    assert result.outcome is S.RATE_LIMITED
    assert result.retry_after == pytest.approx(7.0)
    assert result.message == "too many requests"
    past = classify_sendgrid_response(429, {"X-RateLimit-Reset": str(int(NOW) - 3)}, b"", now=NOW)
    assert past.retry_after == 0.0
    no_reset = classify_sendgrid_response(429, {"Retry-After": "4"}, b"", now=NOW)
    assert no_reset.retry_after == 4.0


@pytest.mark.parametrize("status", [500, 502, 503])
def test_sendgrid_5xx_is_transient(status: int) -> None:
    result = classify_sendgrid_response(status, {}, sg_error("service unavailable"), now=NOW)
    assert (result.outcome, result.status_code) == (S.TRANSIENT, status)


def test_sendgrid_400_naming_the_to_address_is_invalid_contact() -> None:
    body = sg_error("Does not contain a valid address.", "personalizations.0.to.0.email")
    result = classify_sendgrid_response(400, {}, body, now=NOW)
    assert (result.outcome, result.error_code) == (S.INVALID_CONTACT, "personalizations.0.to.0.email")


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (400, sg_error("The subject is required.", "subject"), S.PERMANENT),
        (400, sg_error("The from email does not contain a valid address.", "from.email"), S.PERMANENT),
        (413, b"payload too large", S.PERMANENT),
        (401, sg_error("The provided authorization grant is invalid, expired, or revoked"), S.CONFIG_ERROR),
        (403, sg_error("access forbidden"), S.CONFIG_ERROR),
    ],
)
def test_sendgrid_other_4xx(status: int, body: object, outcome: SendOutcome) -> None:
    assert classify_sendgrid_response(status, {}, body, now=NOW).outcome is outcome


# ---------------------------------------------------------------------------------------------- Twilio
def tw_error(code: int, status: int, message: str = "x") -> dict:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def test_twilio_201_is_sent_with_sid() -> None:
    result = classify_twilio_response(201, {}, b'{"sid": "SM0123", "status": "queued"}', now=NOW)
    assert (result.outcome, result.provider_message_id) == (S.SENT, "SM0123")


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (429, 20429, S.RATE_LIMITED),
        (400, 21211, S.INVALID_CONTACT),
        (400, 21612, S.INVALID_CONTACT),
        (400, 21614, S.INVALID_CONTACT),
        (400, 30006, S.INVALID_CONTACT),
        (400, 21610, S.INVALID_CONTACT),  # replied STOP
        (400, 21611, S.TRANSIENT),
        (400, 30001, S.TRANSIENT),
        (500, 20500, S.TRANSIENT),
        (503, 20503, S.TRANSIENT),
        (401, 20003, S.CONFIG_ERROR),
        (400, 21602, S.PERMANENT),
        (400, 21617, S.PERMANENT),
    ],
)
def test_twilio_error_codes(status: int, code: int, outcome: SendOutcome) -> None:
    result = classify_twilio_response(status, {}, tw_error(code, status), now=NOW)
    assert (result.outcome, result.error_code, result.status_code) == (outcome, str(code), status)


def test_twilio_429_honours_retry_after_seconds_and_http_date() -> None:
    seconds = classify_twilio_response(429, {"Retry-After": "3"}, tw_error(20429, 429), now=NOW)
    assert seconds.retry_after == 3.0
    date = email.utils.formatdate(NOW + 12, usegmt=True)
    dated = classify_twilio_response(429, {"retry-after": date}, tw_error(20429, 429), now=NOW)
    assert dated.retry_after == pytest.approx(12.0)


def test_twilio_error_without_json_body_falls_back_to_status() -> None:
    assert classify_twilio_response(502, {}, b"<html>bad gateway</html>", now=NOW).outcome is S.TRANSIENT
    assert classify_twilio_response(404, {}, b"", now=NOW).error_code == "http_404"


# ---------------------------------------------------------------------------------------------- FCM
def fcm_error(code: int, status: str, error_code: str | None) -> dict:
    error: dict = {"code": code, "message": "m", "status": status}
    if error_code:
        error["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]
    return {"error": error}


def test_fcm_200_is_sent_with_name() -> None:
    result = classify_fcm_response(200, {}, b'{"name": "projects/p/messages/0:1"}', now=NOW)
    assert (result.outcome, result.provider_message_id) == (S.SENT, "projects/p/messages/0:1")


@pytest.mark.parametrize(
    ("status", "rpc", "fcm_code", "outcome"),
    [
        (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", S.PERMANENT),
        (401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", S.CONFIG_ERROR),
        (401, "UNAUTHENTICATED", None, S.CONFIG_ERROR),
        (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", S.INVALID_CONTACT),
        (404, "NOT_FOUND", "UNREGISTERED", S.INVALID_CONTACT),
        (500, "INTERNAL", "INTERNAL", S.TRANSIENT),
        (503, "UNAVAILABLE", "UNAVAILABLE", S.TRANSIENT),
        (400, "INVALID_ARGUMENT", None, S.PERMANENT),
    ],
)
def test_fcm_error_table(status: int, rpc: str, fcm_code: str | None, outcome: SendOutcome) -> None:
    result = classify_fcm_response(status, {}, fcm_error(status, rpc, fcm_code), now=NOW)
    assert (result.outcome, result.error_code) == (outcome, fcm_code or rpc)


def test_fcm_quota_exceeded_waits_at_least_a_minute() -> None:
    short = classify_fcm_response(429, {"Retry-After": "5"}, fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"))
    assert (short.outcome, short.retry_after) == (S.RATE_LIMITED, 60.0)
    longer = classify_fcm_response(429, {"Retry-After": "120"}, fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"))
    assert longer.retry_after == 120.0


def test_fcm_unavailable_honours_retry_after() -> None:
    result = classify_fcm_response(503, {"Retry-After": "30"}, fcm_error(503, "UNAVAILABLE", "UNAVAILABLE"))
    assert (result.outcome, result.retry_after) == (S.TRANSIENT, 30.0)
    assert classify_fcm_response(503, {}, fcm_error(503, "UNAVAILABLE", "UNAVAILABLE")).retry_after is None


# ---------------------------------------------------------------------------------------------- APNs
def test_apns_200_is_sent_with_apns_id() -> None:
    result = classify_apns_response(200, {"apns-id": "E621E1F8-C36C-495A-93FC-0C247A3E6E5F"}, b"")
    assert (result.outcome, result.provider_message_id) == (S.SENT, "E621E1F8-C36C-495A-93FC-0C247A3E6E5F")


@pytest.mark.parametrize(
    ("status", "reason", "outcome"),
    [
        (400, "BadDeviceToken", S.INVALID_CONTACT),
        (400, "DeviceTokenNotForTopic", S.INVALID_CONTACT),
        (400, "BadCollapseId", S.PERMANENT),
        (400, "PayloadEmpty", S.PERMANENT),
        (400, "TopicDisallowed", S.CONFIG_ERROR),
        (403, "ExpiredProviderToken", S.CONFIG_ERROR),
        (403, "InvalidProviderToken", S.CONFIG_ERROR),
        (405, "MethodNotAllowed", S.PERMANENT),
        (410, "Unregistered", S.INVALID_CONTACT),
        (413, "PayloadTooLarge", S.PERMANENT),
        (429, "TooManyRequests", S.RATE_LIMITED),
        (500, "InternalServerError", S.TRANSIENT),
        (503, "ServiceUnavailable", S.TRANSIENT),
    ],
)
def test_apns_reason_table(status: int, reason: str, outcome: SendOutcome) -> None:
    result = classify_apns_response(status, {}, {"reason": reason})
    assert (result.outcome, result.error_code, result.status_code) == (outcome, reason, status)


def test_apns_410_reports_when_the_token_died() -> None:
    result = classify_apns_response(410, {}, b'{"reason": "Unregistered", "timestamp": 1700000000000}')
    assert "1700000000000" in result.message


# ---------------------------------------------------------------------------------------------- webhooks
@pytest.mark.parametrize(
    ("status", "headers", "outcome", "retry_after"),
    [
        (200, {}, S.SENT, None),
        (204, {}, S.SENT, None),
        (503, {"Retry-After": "9"}, S.RATE_LIMITED, 9.0),
        (503, {}, S.TRANSIENT, None),
        (500, {}, S.TRANSIENT, None),
        (429, {"Retry-After": "2"}, S.RATE_LIMITED, 2.0),
        (408, {}, S.TRANSIENT, None),
        (410, {}, S.INVALID_CONTACT, None),
        (400, {}, S.PERMANENT, None),
        (401, {}, S.PERMANENT, None),
        (404, {}, S.PERMANENT, None),
        (301, {"Location": "https://elsewhere"}, S.PERMANENT, None),
    ],
)
def test_webhook_table(status: int, headers: dict, outcome: SendOutcome, retry_after: float | None) -> None:
    result = classify_webhook_response(status, headers, b"", now=NOW, message_id="n-1")
    assert (result.outcome, result.retry_after) == (outcome, retry_after)
    if outcome is S.SENT:
        assert result.provider_message_id == "n-1"


# ---------------------------------------------------------------------------------------------- generic and SMTP
@pytest.mark.parametrize(
    ("status", "outcome"),
    [(202, S.SENT), (429, S.RATE_LIMITED), (401, S.CONFIG_ERROR), (422, S.PERMANENT), (502, S.TRANSIENT)],
)
def test_generic_http_table(status: int, outcome: SendOutcome) -> None:
    assert classify_http_status(status, {}, b"", provider="mailgun").outcome is outcome


@pytest.mark.parametrize(
    ("code", "text", "stage", "outcome"),
    [
        (550, "5.1.1 <x@example.com>: User unknown", "rcpt", S.INVALID_CONTACT),
        (553, "5.1.3 Bad recipient address syntax", "rcpt", S.INVALID_CONTACT),
        (552, "5.2.2 Mailbox full", "rcpt", S.PERMANENT),
        (451, "4.3.0 Temporary failure, try again later", "rcpt", S.TRANSIENT),
        (451, "4.7.1 Rate limit exceeded, try again later", "mail", S.RATE_LIMITED),
        (421, "4.7.0 Too many connections", "mail", S.RATE_LIMITED),
        (554, "5.7.1 Message rejected", "data", S.PERMANENT),
        (535, "5.7.8 Authentication failed", "", S.CONFIG_ERROR),
    ],
)
def test_smtp_reply_table(code: int, text: str, stage: str, outcome: SendOutcome) -> None:
    result = classify_smtp_reply(code, text, stage=stage)
    assert (result.outcome, result.status_code, result.error_code) == (outcome, code, f"smtp_{code}")


def test_smtp_exceptions() -> None:
    refused = smtplib.SMTPRecipientsRefused({"x@example.com": (550, b"5.1.1 User unknown")})
    assert classify_smtp_exception(refused).outcome is S.INVALID_CONTACT
    deferred = smtplib.SMTPRecipientsRefused({"x@example.com": (451, b"4.3.0 try later")})
    assert classify_smtp_exception(deferred).outcome is S.TRANSIENT
    throttled = smtplib.SMTPSenderRefused(451, b"4.7.1 Rate limit exceeded, try again later", "from@example.com")
    assert classify_smtp_exception(throttled).outcome is S.RATE_LIMITED
    assert classify_smtp_exception(smtplib.SMTPServerDisconnected("gone")).outcome is S.TRANSIENT
    assert classify_smtp_exception(ConnectionRefusedError(111, "refused")).outcome is S.TRANSIENT
    assert classify_smtp_exception(TimeoutError()).error_code == "timeout"
    assert classify_smtp_exception(smtplib.SMTPAuthenticationError(535, b"nope")).outcome is S.CONFIG_ERROR
    assert classify_smtp_exception(smtplib.SMTPDataError(554, b"5.7.1 spam")).outcome is S.PERMANENT
    assert classify_smtp_exception(ValueError("a bug")) is None


# ---------------------------------------------------------------------------------------------- shared helpers
def test_parse_retry_after() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(email.utils.formatdate(NOW + 30, usegmt=True), now=NOW) == pytest.approx(30.0)


def test_provider_errors_round_trip_through_results() -> None:
    result = SendResult(S.RATE_LIMITED, "twilio", status_code=429, error_code="20429", message="slow", retry_after=2.0)
    error = ProviderError.from_result(result, response={"raw": 1})
    assert isinstance(error, RateLimitedError)
    assert error.response == {"raw": 1}
    assert error.to_result() == result
    assert isinstance(ProviderError.from_result(SendResult(S.INVALID_CONTACT, "x")), InvalidContactError)
    assert isinstance(ProviderError.from_result(SendResult(S.CONFIG_ERROR, "x")), ConfigurationError)
    assert "response" not in repr(error)
    assert result.to_dict()["outcome"] == "rate_limited"
    assert S.TRANSIENT.retryable and S.RATE_LIMITED.retryable and not S.PERMANENT.retryable


def test_network_exceptions_translate_and_bugs_do_not() -> None:
    request = httpx.Request("POST", "https://example.com")
    cases = {
        httpx.ReadTimeout("t", request=request): (S.TRANSIENT, "timeout"),
        httpx.PoolTimeout("t", request=request): (S.TRANSIENT, "pool_timeout"),
        httpx.ConnectError("c", request=request): (S.TRANSIENT, "connect_error"),
        httpx.RemoteProtocolError("r", request=request): (S.TRANSIENT, "protocol_error"),
        httpx.ReadError("r", request=request): (S.TRANSIENT, "network_error"),
        httpx.UnsupportedProtocol("u", request=request): (S.CONFIG_ERROR, "unsupported_protocol"),
        # h2's own stream limit (httpcore can miscount it after a cancelled stream): retry, never DLQ
        httpx.LocalProtocolError("Max outbound streams is 100, 100 open", request=request): (
            S.TRANSIENT,
            "stream_limit",
        ),
        httpx.LocalProtocolError("Illegal header value", request=request): (S.PERMANENT, "local_protocol_error"),
        TransientError("x", provider="p", error_code="e"): (S.TRANSIENT, "e"),
    }
    for exc, (outcome, code) in cases.items():
        result = result_from_exception("p", exc)
        assert result is not None and (result.outcome, result.error_code) == (outcome, code), exc
    assert result_from_exception("p", KeyError("bug")) is None


def test_device_aggregation() -> None:
    ok = SendResult(S.SENT, "fcm", provider_message_id="m1", status_code=200)
    dead = SendResult(S.INVALID_CONTACT, "fcm", status_code=404, error_code="UNREGISTERED")
    slow = SendResult(S.RATE_LIMITED, "fcm", status_code=429, retry_after=60.0)
    down = SendResult(S.TRANSIENT, "fcm", status_code=503, retry_after=90.0)

    mixed = aggregate_device_results("fcm", [("a", ok), ("b", dead)])
    assert (mixed.outcome, mixed.invalid_tokens, mixed.provider_message_id) == (S.SENT, ["b"], "m1")
    all_dead = aggregate_device_results("fcm", [("a", dead), ("b", dead)])
    assert (all_dead.outcome, all_dead.invalid_tokens) == (S.INVALID_CONTACT, ["a", "b"])
    retry = aggregate_device_results("fcm", [("a", slow), ("b", dead), ("c", down)])
    assert (retry.outcome, retry.retry_after, retry.invalid_tokens) == (S.RATE_LIMITED, 90.0, ["b"])
    single = aggregate_device_results("fcm", [("a", dead)])
    assert (single.outcome, single.error_code, single.invalid_tokens) == (S.INVALID_CONTACT, "UNREGISTERED", ["a"])
    assert aggregate_device_results("fcm", []).error_code == "no_devices"
    combined = combine_results("push", [replace_tokens(dead, ["x"]), ok])
    assert (combined.outcome, combined.invalid_tokens) == (S.SENT, ["x"])


def replace_tokens(result: SendResult, tokens: list[str]) -> SendResult:
    return SendResult(result.outcome, result.provider, status_code=result.status_code, invalid_tokens=tokens)


def test_keys_and_devices() -> None:
    assert delivery_key("e:1:push", "tok", fanout=False) == "e:1:push"
    assert delivery_key("e:1:push", "tok", fanout=True).startswith("e:1:push:")
    assert delivery_key("e:1:push", "a", fanout=True) != delivery_key("e:1:push", "b", fanout=True)
    assert derived_uuid("e:1:push") == derived_uuid("e:1:push") != derived_uuid("e:2:push")
    message = {"to": {"devices": [["fcm", "a"], ["apns", "b"], ["fcm", "a"], ["fcm", ""], "junk"]}}
    assert devices_for(message, "fcm") == ["a"]  # type: ignore[arg-type]
    assert devices_for(message, "apns") == ["b"]  # type: ignore[arg-type]


def test_secrets_never_print() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{secret}"
    assert secret.reveal() == "hunter2"
    assert not Secret("") and Secret.of(secret) is secret
