"""E-mail through SendGrid's v3 Mail Send API (JSON, Bearer key) over a pooled httpx client.

The native path for SendGrid, the default e-mail provider: one async request per send, no thread.
Sent through django-anymail (kind ``anymail``) the same e-mail costs several times the worker's CPU
(a Django ``EmailMessage``, anymail's payload, ``requests`` in a thread pool), which on a busy
worker also makes the sends' arrival times at the provider irregular. Other ESPs keep anymail.
"""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any

import httpx
import orjson

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.base import HttpProviderAdapter
from notifications.providers.classification import classify_sendgrid_response
from notifications.providers.credentials import Secret
from notifications.providers.email_content import email_parts
from notifications.providers.errors import ConfigurationError
from notifications.providers.http import build_http_client, resolved_url
from notifications.providers.results import SendResult

DEFAULT_API_URL = "https://api.sendgrid.com/v3/"
#: One socket per send in flight: at 100 ms provider latency, 200 sockets sustain ~2,000 sends/s.
DEFAULT_MAX_CONNECTIONS = 200


def sender(from_email: str) -> dict[str, str]:
    """SendGrid's ``from`` object of an address such as ``Notifications <notifications@example.com>``."""
    name, address = parseaddr(from_email)
    return {"email": address, "name": name} if name else {"email": address}


class SendGridEmailAdapter(HttpProviderAdapter):
    """``POST /v3/mail/send`` with the subject, the text body (and HTML alternative) and the headers of
    the message (``X-Notification-Id``, one-click ``List-Unsubscribe``). The notification id travels as
    ``custom_args.notification_id``, which SendGrid's event webhook reports back."""

    name = "sendgrid"
    channel = "email"

    def __init__(
        self,
        *,
        api_key: str | Secret,
        from_email: str,
        api_url: str = DEFAULT_API_URL,
        timeout: float = 10.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        client: httpx.AsyncClient | None = None,
        **kwargs: Any,
    ) -> None:
        self._api_key = Secret.of(api_key)
        self.from_email = from_email
        self._from = sender(from_email)
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        client = client or build_http_client(
            base_url=self.api_url,
            timeout=timeout,
            max_connections=max_connections,
            headers={"Authorization": f"Bearer {self._api_key.reveal()}", "Content-Type": "application/json"},
        )
        super().__init__(client=client, **kwargs)
        self._send_url = resolved_url(self.client, "mail/send")

    def build_request(self, message: ChannelMessage) -> httpx.Request:
        if not self._api_key:
            raise ConfigurationError("SendGrid API key is empty", provider=self.name, error_code="missing_credentials")
        parts = email_parts(message, provider=self.name)
        content = [{"type": "text/plain", "value": parts.body}] if parts.body else []
        if parts.html:
            content.append({"type": "text/html", "value": parts.html})
        payload = {
            "personalizations": [{"to": [{"email": parts.to}]}],
            "from": self._from,
            "subject": parts.subject,
            "content": content,
            "headers": parts.headers,
            "custom_args": {"notification_id": message["id"]},
        }
        return self.client.build_request("POST", self._send_url, content=orjson.dumps(payload))

    def parse_response(self, response: httpx.Response, message: ChannelMessage) -> SendResult:
        return classify_sendgrid_response(
            response.status_code, response.headers, response.content, now=self.clock(), provider=self.name
        )

    def __repr__(self) -> str:
        return f"<SendGridEmailAdapter api_key={self._api_key!r} api_url={self.api_url!r}>"
