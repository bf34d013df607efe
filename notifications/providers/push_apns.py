"""Push through the APNs provider API: HTTP/2, ES256 provider-token (JWT) auth, one POST per device token."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import orjson

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.base import HttpProviderAdapter
from notifications.providers.classification import APNS_PROVIDER_TOKEN_REASONS, apns_reason, classify_apns_response
from notifications.providers.credentials import Secret
from notifications.providers.errors import ConfigurationError, InvalidMessageError, result_from_exception
from notifications.providers.http import build_http_client
from notifications.providers.message_fields import delivery_key, derived_uuid, devices_for, require
from notifications.providers.results import SendResult, aggregate_device_results

DEFAULT_BASE_URL = "https://api.push.apple.com"
SANDBOX_BASE_URL = "https://api.sandbox.push.apple.com"
PLATFORM = "apns"
#: Apple: refresh the provider token no more than once every 20 minutes and no less than once every
#: 60 (429 TooManyProviderTokenUpdates above that rate, 403 ExpiredProviderToken below it).
MIN_TOKEN_AGE = 20 * 60.0
MAX_TOKEN_AGE = 50 * 60.0
DEFAULT_TOKEN_REFRESH = 40 * 60.0
#: Each HTTP/2 connection multiplexes up to the server's stream limit (~1000 at Apple), so a few suffice.
DEFAULT_MAX_CONNECTIONS = 4
#: Pushes in flight, bounded here so that a burst of thousands waits in one semaphore instead of in
#: httpcore's pool (which rescans its whole queue on every stream event). 100 is the usual server
#: stream limit (h2's default; Apple advertises more). It is not multiplied by the connections:
#: httpcore puts every request on the first HTTP/2 connection that is still usable (it opens another
#: only when that one is closing), so what is over the server's limit waits inside httpcore for a
#: stream -- within the send deadline, which then expires on pushes the server accepted meanwhile.
STREAMS_PER_CONNECTION = 100
#: Pushes a worker has in flight (`max_in_flight`): all of them share that one connection, and under
#: CPU contention its requests slow down together; at 100 their p99 passed the send deadline
#: (docs/architecture.md, "Delivery", worker loop).
DEFAULT_MAX_IN_FLIGHT = 32


def load_apns_key(*, key: str = "", key_file: str = "") -> Secret:
    """The .p8 signing key (PEM text) from a setting, or from a file path."""
    if key:
        return Secret(key)
    if key_file:
        return Secret(Path(key_file).read_text(encoding="utf-8"))
    return Secret("")


class ApnsPushAdapter(HttpProviderAdapter):
    """``POST /3/device/{token}`` over HTTP/2 (ALPN over TLS; prior knowledge over cleartext).

    The provider token (``iss`` team id, ``iat``, header ``kid``) is minted once and reused until it
    is ``token_refresh`` seconds old (clamped to 20-50 min). On 403 ExpiredProviderToken it is
    re-minted early and the push retried once; on InvalidProviderToken too, unless the current token
    is itself younger than 20 minutes (a fresh token from the same key would not fix it). Either then
    stands as ``config_error``. ``apns-id`` is a uuid5 of the delivery key so APNs and receivers can
    deduplicate retries.
    """

    name = "apns"
    channel = "push"
    platform = PLATFORM

    def __init__(
        self,
        *,
        signing_key: str | Secret,
        key_id: str,
        team_id: str,
        topic: str,
        base_url: str = DEFAULT_BASE_URL,
        token_refresh: float = DEFAULT_TOKEN_REFRESH,
        timeout: float = 10.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        client: httpx.AsyncClient | None = None,
        **kwargs: Any,
    ) -> None:
        self._signing_key = Secret.of(signing_key)
        self.key_id = key_id
        self.team_id = team_id
        self.topic = topic
        self.base_url = base_url.rstrip("/")
        self.token_refresh = min(MAX_TOKEN_AGE, max(MIN_TOKEN_AGE, float(token_refresh)))
        client = client or build_http_client(
            base_url=self.base_url, timeout=timeout, max_connections=max(1, min(max_connections, 16)), http2=True
        )
        super().__init__(client=client, **kwargs)
        self.max_in_flight = max(1, min(max_in_flight, STREAMS_PER_CONNECTION))
        self._in_flight = asyncio.Semaphore(self.max_in_flight)
        self._token: str | None = None
        self._token_iat = 0.0
        self.tokens_minted = 0  # how many provider tokens this adapter signed (observability, tests)

    # ------------------------------------------------------------------------------------- provider token
    def provider_token(self) -> str:
        """The cached provider token, re-signed only when it reaches ``token_refresh`` seconds of age."""
        if self._token is None or self.clock() - self._token_iat >= self.token_refresh:
            self._mint()
        assert self._token is not None  # noqa: S101 - narrows the type: _mint() sets it or raises
        return self._token

    def _mint(self) -> None:
        if not (self._signing_key and self.key_id and self.team_id):
            raise ConfigurationError(
                "APNs signing key, key id or team id not configured",
                provider=self.name,
                error_code="missing_credentials",
            )
        iat = int(self.clock())
        try:
            token = jwt.encode(
                {"iss": self.team_id, "iat": iat},
                self._signing_key.reveal(),
                algorithm="ES256",
                headers={"kid": self.key_id},
            )
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise ConfigurationError(
                "APNs signing key is unusable", provider=self.name, error_code="bad_signing_key"
            ) from exc
        self._token, self._token_iat = token, float(iat)
        self.tokens_minted += 1

    def _renew_after_rejection(self, rejected: str, reason: str) -> bool:
        """Whether a retry can help after ``rejected`` got 403 ``reason``; re-mints at most once per token."""
        if self._token != rejected:
            return True  # a concurrent push already replaced it: retry with the new one
        if reason == "ExpiredProviderToken" or self.clock() - self._token_iat >= MIN_TOKEN_AGE:
            self._mint()
            return True
        return False

    # ------------------------------------------------------------------------------------- sending
    def build_payload(self, message: ChannelMessage, key: str) -> bytes:
        content = message.get("content") or {}
        extra = {k: v for k, v in (content.get("data") or {}).items() if k != "aps"}
        extra.setdefault("notification_id", key)
        alert = {"title": str(content.get("title") or ""), "body": str(content.get("body") or "")}
        return orjson.dumps({"aps": {"alert": alert}, **extra}, default=str)

    def requests_for(self, message: ChannelMessage) -> int:
        return max(1, len(devices_for(message, self.platform)))  # one POST (one stream) per device

    async def _send(self, message: ChannelMessage) -> SendResult:
        require(message, "to", "devices", provider=self.name)
        tokens = devices_for(message, self.platform)
        if not tokens:
            raise InvalidMessageError("message has no APNs device tokens", provider=self.name, error_code="no_devices")
        if not self.topic:
            raise ConfigurationError(
                "APNs topic (bundle id) not configured", provider=self.name, error_code="missing_topic"
            )
        self.provider_token()  # a configuration problem fails the message once, not once per device
        fanout = len(tokens) > 1
        results = await asyncio.gather(
            *(
                self._send_to_device(message, token, delivery_key(message["id"], token, fanout=fanout))
                for token in tokens
            )
        )
        return aggregate_device_results(self.name, list(zip(tokens, results, strict=True)))

    async def _send_to_device(self, message: ChannelMessage, device: str, key: str) -> SendResult:
        body = self.build_payload(message, key)
        headers = {
            "apns-topic": self.topic,
            "apns-push-type": "alert",
            "apns-priority": "10" if message.get("urgency") == "urgent" else "5",
            "apns-id": str(derived_uuid(key)),
            "content-type": "application/json",
        }
        try:
            for attempt in range(2):
                token = self.provider_token()
                async with self._in_flight:
                    response = await self.client.post(
                        f"/3/device/{quote(device, safe='')}",
                        content=body,
                        headers={**headers, "authorization": f"bearer {token}"},
                    )
                result = classify_apns_response(
                    response.status_code, response.headers, response.content, now=self.clock(), provider=self.name
                )
                reason, _ = apns_reason(response.content)
                if (
                    response.status_code == 403
                    and reason in APNS_PROVIDER_TOKEN_REASONS
                    and attempt == 0
                    and self._renew_after_rejection(token, reason)
                ):
                    continue
                return result
        except Exception as exc:  # per-device translation: one reset stream must not hide the others
            translated = result_from_exception(self.name, exc)
            if translated is None:
                raise
            return translated
        raise AssertionError("unreachable")  # pragma: no cover

    def __repr__(self) -> str:
        return (
            f"<ApnsPushAdapter team_id={self.team_id!r} key_id={self.key_id!r} topic={self.topic!r} "
            f"signing_key={self._signing_key!r} base_url={self.base_url!r}>"
        )
