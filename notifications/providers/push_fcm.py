"""Push through FCM HTTP v1 with a service-account OAuth2 token (RS256 JWT bearer grant), one POST per token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.base import HttpProviderAdapter
from notifications.providers.classification import classify_fcm_response, fcm_error_code
from notifications.providers.credentials import Secret
from notifications.providers.errors import (
    ConfigurationError,
    InvalidMessageError,
    TransientError,
    result_from_exception,
)
from notifications.providers.http import body_text, build_http_client, json_body, resolved_url
from notifications.providers.message_fields import delivery_key, devices_for, require
from notifications.providers.results import SendResult, aggregate_device_results

DEFAULT_BASE_URL = "https://fcm.googleapis.com"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - Google's token endpoint URL, not a password
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Google's maximum assertion lifetime is one hour.
ASSERTION_LIFETIME = 3600
#: Refresh the access token this long before it expires, so no request carries a token that dies
#: in flight; Google issues tokens for an hour, so one exchange serves ~55 minutes of sends.
TOKEN_REFRESH_MARGIN = 300.0
DEFAULT_MAX_CONNECTIONS = 200
PLATFORM = "fcm"


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The fields of a Google service-account key file that the token exchange needs."""

    project_id: str
    client_email: str
    private_key: Secret
    private_key_id: str = ""
    token_uri: str = DEFAULT_TOKEN_URI

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> ServiceAccount:
        missing = [k for k in ("client_email", "private_key") if not info.get(k)]
        if missing:
            raise ValueError(f"service account JSON lacks {', '.join(missing)}")
        return cls(
            project_id=str(info.get("project_id") or ""),
            client_email=str(info["client_email"]),
            private_key=Secret(str(info["private_key"])),
            private_key_id=str(info.get("private_key_id") or ""),
            token_uri=str(info.get("token_uri") or DEFAULT_TOKEN_URI),
        )

    @classmethod
    def from_json(cls, text: str) -> ServiceAccount:
        return cls.from_info(json.loads(text))

    @classmethod
    def from_file(cls, path: str | Path) -> ServiceAccount:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


def fcm_data(data: Mapping[str, Any] | None) -> dict[str, str]:
    """FCM ``data`` values must be strings: strings pass, everything else is JSON-encoded."""
    out: dict[str, str] = {}
    for key, value in (data or {}).items():
        if value is None:
            continue
        out[str(key)] = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return out


class FcmPushAdapter(HttpProviderAdapter):
    """``POST {base}/v1/projects/{project}/messages:send`` per FCM device token of the message.

    The OAuth2 access token is exchanged once and cached until ``TOKEN_REFRESH_MARGIN`` before it
    expires; an ``asyncio.Lock`` makes concurrent sends wait for one exchange instead of stampeding
    the token endpoint. A 401 UNAUTHENTICATED (token revoked early) drops the cached token and
    retries that device once. Devices are sent concurrently and aggregated
    (:func:`aggregate_device_results`); ``data.notification_id`` carries the delivery key.
    """

    name = "fcm"
    channel = "push"
    platform = PLATFORM

    def __init__(
        self,
        *,
        service_account: ServiceAccount | None,
        project_id: str = "",
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        client: httpx.AsyncClient | None = None,
        **kwargs: Any,
    ) -> None:
        self.service_account = service_account
        self.project_id = project_id or (service_account.project_id if service_account else "")
        self.base_url = base_url.rstrip("/")
        client = client or build_http_client(base_url=self.base_url, timeout=timeout, max_connections=max_connections)
        super().__init__(client=client, **kwargs)
        self._send_url = resolved_url(self.client, f"/v1/projects/{self.project_id}/messages:send")
        self._access_token: Secret | None = None
        self._expires_at = 0.0
        self._token_lock = asyncio.Lock()
        self.token_exchanges = 0  # how many access tokens this adapter fetched (observability, tests)

    # ------------------------------------------------------------------------------------- OAuth2
    def _assertion(self, now: float) -> str:
        account = self.service_account
        assert account is not None  # noqa: S101 - narrows the type: the caller checked it
        claims = {
            "iss": account.client_email,
            "scope": SCOPE,
            "aud": account.token_uri,
            "iat": int(now),
            "exp": int(now) + ASSERTION_LIFETIME,
        }
        headers = {"kid": account.private_key_id} if account.private_key_id else None
        try:
            return jwt.encode(claims, account.private_key.reveal(), algorithm="RS256", headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise ConfigurationError(
                "FCM service account private key is unusable", provider=self.name, error_code="bad_private_key"
            ) from exc

    async def access_token(self) -> str:
        """A valid access token, exchanging a new one only when the cached one is near expiry."""
        token = self._access_token
        if token is not None and self.clock() < self._expires_at - TOKEN_REFRESH_MARGIN:
            return token.reveal()
        async with self._token_lock:
            token = self._access_token  # another send may have refreshed while we waited
            if token is not None and self.clock() < self._expires_at - TOKEN_REFRESH_MARGIN:
                return token.reveal()
            return await self._exchange_token()

    async def _exchange_token(self) -> str:
        account = self.service_account
        if account is None:
            raise ConfigurationError(
                "FCM service account not configured", provider=self.name, error_code="missing_credentials"
            )
        now = self.clock()
        response = await self.client.post(
            account.token_uri, data={"grant_type": JWT_BEARER, "assertion": self._assertion(now)}
        )
        data = json_body(response.content)
        if response.status_code != 200 or not isinstance(data, Mapping) or not data.get("access_token"):
            text = body_text(response.content)
            if response.status_code >= 500 or response.status_code == 429:
                raise TransientError(
                    f"token endpoint answered {response.status_code}: {text}",
                    provider=self.name,
                    status_code=response.status_code,
                    error_code="token_endpoint",
                    response=response,
                )
            error = str(data.get("error") or "token_exchange") if isinstance(data, Mapping) else "token_exchange"
            raise ConfigurationError(
                f"token exchange failed: {text}",
                provider=self.name,
                status_code=response.status_code,
                error_code=error,
                response=response,
            )
        self._access_token = Secret(str(data["access_token"]))
        self._expires_at = now + float(data.get("expires_in") or 3600)
        self.token_exchanges += 1
        return self._access_token.reveal()

    def _forget_token(self, token: str) -> None:
        if self._access_token is not None and self._access_token.reveal() == token:
            self._access_token = None
            self._expires_at = 0.0

    # ------------------------------------------------------------------------------------- sending
    def build_payload(self, message: ChannelMessage, token: str, key: str) -> dict[str, Any]:
        content = message.get("content") or {}
        data = fcm_data(content.get("data"))
        data["notification_id"] = key
        body: dict[str, Any] = {
            "token": token,
            "notification": {"title": str(content.get("title") or ""), "body": str(content.get("body") or "")},
            "data": data,
            "android": {"priority": "HIGH" if message.get("urgency") == "urgent" else "NORMAL"},
        }
        return {"message": body}

    async def _send(self, message: ChannelMessage) -> SendResult:
        require(message, "to", "devices", provider=self.name)
        tokens = devices_for(message, self.platform)
        if not tokens:
            raise InvalidMessageError("message has no FCM device tokens", provider=self.name, error_code="no_devices")
        if not self.project_id:
            raise ConfigurationError("FCM project id not configured", provider=self.name, error_code="missing_project")
        fanout = len(tokens) > 1
        results = await asyncio.gather(
            *(
                self._send_to_token(message, token, delivery_key(message["id"], token, fanout=fanout))
                for token in tokens
            )
        )
        return aggregate_device_results(self.name, list(zip(tokens, results, strict=True)))

    async def _send_to_token(self, message: ChannelMessage, token: str, key: str) -> SendResult:
        payload = orjson.dumps(self.build_payload(message, token, key))
        url = self._send_url
        try:
            for attempt in range(2):
                access = await self.access_token()
                response = await self.client.post(
                    url,
                    content=payload,
                    headers={"Authorization": f"Bearer {access}", "Content-Type": "application/json; UTF-8"},
                )
                result = classify_fcm_response(
                    response.status_code, response.headers, response.content, now=self.clock(), provider=self.name
                )
                if response.status_code == 401 and attempt == 0 and self._token_rejected(response):
                    self._forget_token(access)
                    continue
                return result
        except Exception as exc:  # per-device translation: one dead socket must not hide the others' results
            translated = result_from_exception(self.name, exc)
            if translated is None:
                raise
            return translated
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _token_rejected(response: httpx.Response) -> bool:
        """401 for our access token (refresh and retry) rather than THIRD_PARTY_AUTH_ERROR (APNs cert)."""
        fcm_code, _status, _message = fcm_error_code(response.content)
        return fcm_code != "THIRD_PARTY_AUTH_ERROR"

    def __repr__(self) -> str:
        email = self.service_account.client_email if self.service_account else None
        return f"<FcmPushAdapter project={self.project_id!r} account={email!r} base_url={self.base_url!r}>"


__all__ = ["FcmPushAdapter", "ServiceAccount", "fcm_data"]
