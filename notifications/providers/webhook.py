"""Webhooks: POST the JSON payload to the recipient's URL, signed the Standard Webhooks way (with the
endpoint's own secrets when it is registered), back-pressure scoped to that endpoint."""

from __future__ import annotations

import asyncio
import datetime as dt
import weakref
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.base import HttpProviderAdapter
from notifications.providers.classification import classify_webhook_response
from notifications.providers.credentials import Secret
from notifications.providers.errors import ConfigurationError, InvalidContactError, PermanentError, RateLimitedError
from notifications.providers.http import build_http_client
from notifications.providers.message_fields import require
from notifications.providers.results import SendResult
from notifications.webhooks.directory import EndpointDirectory, EndpointEntry, endpoint_directory
from notifications.webhooks.secrets import url_origin

DEFAULT_MAX_CONNECTIONS = 200
#: In-flight requests per endpoint: a slow endpoint may hold this many sockets, never the whole
#: pool, so the other tenants' webhooks keep flowing (Hermes isolates endpoints the same way).
DEFAULT_MAX_PER_HOST = 100
DEFAULT_USER_AGENT = "notification-platform-webhooks/1"


class WebhookAdapter(HttpProviderAdapter):
    """Standard Webhooks sender: headers ``webhook-id`` (= the notification id, what receivers dedupe
    on), ``webhook-timestamp`` and ``webhook-signature`` (``v1,<HMAC-SHA256>`` from the package
    ``standardwebhooks``; one per secret of a registered endpoint, space-separated, so a receiver
    verifies with its old or new secret during a rotation; `WEBHOOK_SIGNING_SECRET` for the others).
    Redirects are not followed (a 3xx is a permanent failure, not a new target). Every result carries
    the endpoint's back-pressure scope (`backpressure_scope`).
    """

    name = "webhook"
    channel = "webhook"

    def __init__(
        self,
        *,
        signing_secret: str | Secret,
        timeout: float = 10.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_host: int = DEFAULT_MAX_PER_HOST,
        user_agent: str = DEFAULT_USER_AGENT,
        client: httpx.AsyncClient | None = None,
        endpoints: EndpointDirectory | None = None,
        **kwargs: Any,
    ) -> None:
        self.endpoints = endpoints if endpoints is not None else endpoint_directory()
        self._secret = Secret.of(signing_secret)
        self._signer: Webhook | None = None
        self._signer_error: Exception | None = None
        if self._secret:
            try:
                self._signer = Webhook(self._secret.reveal())
            except Exception as exc:  # malformed base64 / empty: report per send as config_error
                self._signer_error = exc
        self.max_per_host = max(1, int(max_per_host))
        self.slot_timeout = timeout  # longer in the per-host queue is back-pressure: rate_limited
        self._host_slots: weakref.WeakValueDictionary[str, asyncio.Semaphore] = weakref.WeakValueDictionary()
        client = client or build_http_client(
            timeout=timeout, max_connections=max_connections, headers={"User-Agent": user_agent}
        )
        super().__init__(client=client, **kwargs)

    def backpressure_scope(self, message: ChannelMessage) -> str:
        """``endpoint:<id>`` for a registered endpoint, else ``origin:<scheme://host:port>`` of the URL."""
        url = (message.get("to") or {}).get("url")
        if not url:
            return ""
        entry = self.endpoints.lookup(str(url))
        return entry.scope if entry is not None else f"origin:{url_origin(str(url))}"

    async def send(self, message: ChannelMessage) -> SendResult:
        result = await super().send(message)
        result.scope = self.backpressure_scope(message)
        return result

    def sign(self, msg_id: str, timestamp: int, body: bytes, endpoint: EndpointEntry | None = None) -> str:
        """``v1,<sig>`` with the global secret, or one ``v1,<sig>`` per secret of `endpoint`."""
        at = dt.datetime.fromtimestamp(timestamp, dt.UTC)
        if endpoint is not None:
            if not endpoint.signers:
                raise PermanentError(
                    f"webhook endpoint {endpoint.id} has no usable signing secret",
                    provider=self.name,
                    error_code="endpoint_secret_invalid",
                )
            return " ".join(signer.sign(msg_id, at, body.decode("utf-8")) for signer in endpoint.signers)
        if self._signer is None:
            raise ConfigurationError(
                "webhook signing secret missing or malformed (expected whsec_<base64>)",
                provider=self.name,
                error_code="missing_secret",
            ) from self._signer_error
        return self._signer.sign(msg_id, at, body.decode("utf-8"))

    def build_request(self, message: ChannelMessage) -> httpx.Request:
        url = str(require(message, "to", "url", provider=self.name))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidContactError(
                f"webhook URL {url!r} is not an http(s) URL", provider=self.name, error_code="bad_url"
            )
        endpoint = self.endpoints.lookup(url)
        if endpoint is not None and not endpoint.active:
            raise PermanentError(
                f"webhook endpoint {endpoint.id} is switched off", provider=self.name, error_code="endpoint_inactive"
            )
        payload = (message.get("content") or {}).get("payload")
        body = orjson.dumps(payload if payload is not None else {})
        msg_id = message["id"]
        timestamp = int(self.clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.sign(msg_id, timestamp, body, endpoint),
        }
        try:
            return self.client.build_request("POST", url, content=body, headers=headers)
        except httpx.InvalidURL as exc:
            raise InvalidContactError(
                f"webhook URL {url!r} is invalid", provider=self.name, error_code="bad_url"
            ) from exc

    async def _send(self, message: ChannelMessage) -> SendResult:
        require(message, "to", "url", provider=self.name)
        scope = self.backpressure_scope(message)
        slots = self._host_slots.get(scope)
        if slots is None:
            slots = asyncio.Semaphore(self.max_per_host)
            self._host_slots[scope] = slots  # weak: forgotten once no send to that endpoint is in flight
        try:
            async with asyncio.timeout(self.slot_timeout):
                await slots.acquire()
        except TimeoutError:
            raise RateLimitedError(
                f"{self.max_per_host} webhooks to {scope} already in flight",
                provider=self.name,
                error_code="endpoint_busy",
                retry_after=1.0,
            ) from None
        try:
            # Signed only once a slot is ours: a send queued behind a slow host keeps a fresh timestamp.
            request = self.build_request(message)
            response = await self.client.send(request)
        finally:
            slots.release()
        return self.parse_response(response, message)

    def parse_response(self, response: httpx.Response, message: ChannelMessage) -> SendResult:
        return classify_webhook_response(
            response.status_code,
            response.headers,
            response.content,
            now=self.clock(),
            provider=self.name,
            message_id=message["id"],
        )

    def __repr__(self) -> str:
        return f"<WebhookAdapter signing_secret={self._secret!r} max_per_host={self.max_per_host}>"
