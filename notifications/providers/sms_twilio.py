"""SMS through the Twilio Messages API (form-encoded POST, HTTP Basic auth) over a pooled httpx client."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.base import HttpProviderAdapter
from notifications.providers.classification import classify_twilio_response
from notifications.providers.credentials import Secret
from notifications.providers.errors import ConfigurationError
from notifications.providers.http import build_http_client, resolved_url
from notifications.providers.message_fields import require
from notifications.providers.results import SendResult

DEFAULT_BASE_URL = "https://api.twilio.com"
#: Twilio's API concurrency limit is per account; 200 sockets keep hundreds of sends in flight.
DEFAULT_MAX_CONNECTIONS = 200


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


class TwilioSmsAdapter(HttpProviderAdapter):
    """``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``: To, Body, From or MessagingServiceSid.

    Authenticates with the account SID and auth token, or an API key (``SK…``) and its secret. The
    notification id travels as ``I-Twilio-Idempotency-Token`` and, when a status callback is
    configured, as its ``notification_id`` query parameter (so delivery receipts can be joined).
    """

    name = "twilio"
    channel = "sms"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str | Secret,
        api_key_sid: str = "",
        from_number: str = "",
        messaging_service_sid: str = "",
        status_callback: str = "",
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        client: httpx.AsyncClient | None = None,
        **kwargs: Any,
    ) -> None:
        self.account_sid = account_sid
        self._auth_token = Secret.of(auth_token)
        self.api_key_sid = api_key_sid
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.status_callback = status_callback
        self.base_url = base_url.rstrip("/")
        user = api_key_sid or account_sid
        auth = httpx.BasicAuth(user, self._auth_token.reveal()) if user and self._auth_token else None
        client = client or build_http_client(
            base_url=self.base_url, timeout=timeout, max_connections=max_connections, auth=auth
        )
        super().__init__(client=client, **kwargs)
        self._messages_url = resolved_url(self.client, f"/2010-04-01/Accounts/{self.account_sid}/Messages.json")

    def build_request(self, message: ChannelMessage) -> httpx.Request:
        if not (self.account_sid and self._auth_token):
            raise ConfigurationError(
                "Twilio account SID / auth token not configured", provider=self.name, error_code="missing_credentials"
            )
        if not (self.from_number or self.messaging_service_sid):
            raise ConfigurationError(
                "Twilio From number or MessagingServiceSid not configured",
                provider=self.name,
                error_code="missing_sender",
            )
        phone = str(require(message, "to", "phone", provider=self.name))
        body = str(require(message, "content", "body", provider=self.name))
        form = {"To": phone, "Body": body}
        if self.messaging_service_sid:
            form["MessagingServiceSid"] = self.messaging_service_sid
        if self.from_number:
            form["From"] = self.from_number
        if self.status_callback:
            form["StatusCallback"] = _with_query(self.status_callback, notification_id=message["id"])
        return self.client.build_request(
            "POST",
            self._messages_url,
            data=form,
            headers={"I-Twilio-Idempotency-Token": message["id"]},
        )

    def parse_response(self, response: httpx.Response, message: ChannelMessage) -> SendResult:
        return classify_twilio_response(
            response.status_code, response.headers, response.content, now=self.clock(), provider=self.name
        )

    def __repr__(self) -> str:
        return (
            f"<TwilioSmsAdapter account_sid={self.account_sid!r} auth_token={self._auth_token!r} "
            f"base_url={self.base_url!r}>"
        )
