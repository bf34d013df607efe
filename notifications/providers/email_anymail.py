"""E-mail through django-anymail (SendGrid by default, any anymail ESP by setting), in a bounded thread pool.

anymail is synchronous (requests), so sends run in a dedicated ``ThreadPoolExecutor``; every pool
thread keeps one opened backend (one ``requests.Session``, one keep-alive connection) for its life.
"""

from __future__ import annotations

from typing import Any

import requests
from anymail.exceptions import (
    AnymailAPIError,
    AnymailConfigurationError,
    AnymailError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
    AnymailSerializationError,
    AnymailUnsupportedFeature,
)
from anymail.message import AnymailMessage
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import get_connection
from django.utils.module_loading import import_string

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.base import ThreadedProviderAdapter
from notifications.providers.classification import classify_http_status, classify_sendgrid_response
from notifications.providers.email_content import EmailParts, email_parts
from notifications.providers.errors import ConfigurationError, InvalidContactError, PermanentError, ProviderError
from notifications.providers.results import SendOutcome, SendResult, truncate

SENDGRID_BACKEND = "anymail.backends.sendgrid.EmailBackend"
#: One blocking send per thread: at 100 ms provider latency, 100 threads sustain ~1,000 sends/s.
DEFAULT_MAX_WORKERS = 100


def esp_name_of(backend_path: str) -> str:
    """anymail's ``esp_name`` of a backend class (``"SendGrid"``), or the module name for other backends."""
    try:
        backend_class = import_string(backend_path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"cannot import e-mail backend {backend_path!r}") from exc
    name = getattr(backend_class, "esp_name", None)
    return name if isinstance(name, str) else backend_path.rsplit(".", 2)[-2]


class AnymailEmailAdapter(ThreadedProviderAdapter):
    """Sends an ``AnymailMessage`` (subject, text body, optional HTML alternative) through an anymail backend.

    ``metadata={"notification_id": id}`` travels to the ESP (SendGrid ``custom_args``: what the
    sandbox and the ESP's event webhooks report back). ``List-Unsubscribe`` (+ one-click ``-Post``)
    headers are added when the content carries ``list_unsubscribe``. Errors are translated: API
    errors through the ESP's table (SendGrid's, else HTTP semantics), refused or invalid recipients
    to ``invalid_contact``, configuration to ``config_error``, network to ``transient``.
    """

    channel = "email"

    def __init__(
        self,
        *,
        from_email: str,
        backend: str = SENDGRID_BACKEND,
        backend_options: dict[str, Any] | None = None,
        timeout: float = 10.0,
        max_workers: int = DEFAULT_MAX_WORKERS,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.backend_path = backend
        self.esp_name = esp_name_of(backend)
        self.from_email = from_email
        self.timeout = timeout
        self._backend_options = dict(backend_options or {})  # may hold api_key: never in repr
        kwargs.setdefault("queue_timeout", timeout)  # a send never waits longer for a thread than to send
        super().__init__(max_workers=max_workers, name=name or self.esp_name.lower(), **kwargs)

    # ------------------------------------------------------------------------------------- per-thread backend
    def open_connection(self) -> Any:
        try:
            backend = get_connection(
                self.backend_path, fail_silently=False, timeout=self.timeout, **self._backend_options
            )
        except (AnymailConfigurationError, ImproperlyConfigured) as exc:
            raise ConfigurationError(
                f"{self.esp_name} backend misconfigured: {exc}", provider=self.name, error_code="backend_config"
            ) from exc
        if hasattr(backend, "api_key") and not backend.api_key:  # anymail accepts "" and would post it
            raise ConfigurationError(
                f"{self.esp_name} API key is empty", provider=self.name, error_code="missing_credentials"
            )
        backend.open()
        return backend

    def close_connection(self, connection: Any) -> None:
        connection.close()

    # ------------------------------------------------------------------------------------- sending
    async def _send(self, message: ChannelMessage) -> SendResult:
        parts = email_parts(message, provider=self.name)
        return await self.run_in_thread(self._deliver, parts, message["id"])

    def build_email(self, parts: EmailParts, notification_id: str) -> AnymailMessage:
        email = AnymailMessage(
            subject=parts.subject,
            body=parts.body,
            from_email=self.from_email,
            to=[parts.to],
            headers=dict(parts.headers),
            metadata={"notification_id": notification_id},
        )
        if parts.html:
            email.attach_alternative(parts.html, "text/html")
        return email

    def _deliver(self, parts: EmailParts, notification_id: str) -> SendResult:
        """Runs in a pool thread."""
        email = self.build_email(parts, notification_id)
        backend = self.thread_connection()
        try:
            sent = backend.send_messages([email])
        except AnymailRecipientsRefused as exc:
            raise InvalidContactError(
                truncate(str(exc)), provider=self.name, error_code="recipients_refused", response=exc.response
            ) from exc
        except AnymailInvalidAddress as exc:
            raise InvalidContactError(truncate(str(exc)), provider=self.name, error_code="invalid_address") from exc
        except AnymailAPIError as exc:
            result = self.classify_api_error(exc)
            if result.ok:  # a 2xx anymail could not parse: the ESP has the message, do not send it twice
                return result
            raise ProviderError.from_result(result, response=exc.response) from exc
        except (AnymailUnsupportedFeature, AnymailSerializationError) as exc:
            raise PermanentError(truncate(str(exc)), provider=self.name, error_code="unsupported") from exc
        except (AnymailConfigurationError, ImproperlyConfigured) as exc:
            raise ConfigurationError(truncate(str(exc)), provider=self.name, error_code="backend_config") from exc
        except AnymailError as exc:
            raise PermanentError(truncate(str(exc)), provider=self.name, error_code="anymail_error") from exc
        status = getattr(email, "anymail_status", None)
        if not sent or status is None:
            raise PermanentError(
                "the backend did not send the message (cancelled or no recipients)",
                provider=self.name,
                error_code="not_sent",
            )
        statuses = set(status.status or ())
        message_id = status.message_id if isinstance(status.message_id, str) else ""
        response = status.esp_response
        if not message_id and isinstance(response, requests.Response):
            message_id = response.headers.get("X-Message-Id", "")
        if statuses and statuses <= {"failed"}:
            raise PermanentError(
                f"{self.esp_name} reported the message failed", provider=self.name, error_code="failed"
            )
        return SendResult(
            SendOutcome.SENT,
            self.name,
            provider_message_id=message_id,
            status_code=getattr(response, "status_code", None),
        )

    def classify_api_error(self, exc: AnymailAPIError) -> SendResult:
        """The result for an anymail API error: by the ESP's table when it answered, transient when not."""
        response = exc.response
        status = exc.status_code if exc.status_code is not None else getattr(response, "status_code", None)
        if status is None:
            cause = exc.__cause__
            if isinstance(cause, requests.Timeout):
                code = "timeout"
            elif isinstance(cause, requests.RequestException):
                code = "connect_error"
            else:
                code = "api_error"
            return SendResult(SendOutcome.TRANSIENT, self.name, error_code=code, message=truncate(str(exc)))
        headers = getattr(response, "headers", None)
        body = getattr(response, "content", None)
        if self.esp_name.lower() == "sendgrid":
            return classify_sendgrid_response(status, headers, body, now=self.clock(), provider=self.name)
        return classify_http_status(status, headers, body, now=self.clock(), provider=self.name)

    def __repr__(self) -> str:
        return f"<AnymailEmailAdapter name={self.name!r} backend={self.backend_path!r} workers={self.max_workers}>"
