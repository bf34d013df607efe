"""Plain SMTP e-mail through Django's SMTP backend, one persistent SMTP connection per pool thread."""

from __future__ import annotations

import smtplib
from typing import Any

from django.core.mail import EmailMultiAlternatives
from django.core.mail.backends.smtp import EmailBackend as SmtpBackend

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.base import ThreadedProviderAdapter
from notifications.providers.classification import classify_smtp_exception
from notifications.providers.credentials import Secret
from notifications.providers.email_content import EmailParts, email_parts, message_id_header
from notifications.providers.errors import PermanentError, ProviderError, TransientError
from notifications.providers.results import SendOutcome, SendResult

#: Each thread holds one SMTP session; relays typically cap concurrent sessions per client (~20).
DEFAULT_MAX_WORKERS = 16


class SmtpEmailAdapter(ThreadedProviderAdapter):
    """Sends through an SMTP relay. ``Message-ID`` is a uuid5 of the notification id and
    ``X-Notification-Id`` carries the id itself, so a resent message is recognisably the same one.

    RCPT 550/551/553 -> invalid_contact, 4xx -> transient (rate limited when the reply says so),
    connection errors -> transient. A pooled session the server has closed is reopened once.
    """

    name = "smtp"
    channel = "email"

    def __init__(
        self,
        *,
        from_email: str,
        host: str = "127.0.0.1",
        port: int = 18125,
        username: str = "",
        password: str | Secret = "",
        use_tls: bool = False,
        use_ssl: bool = False,
        timeout: float = 10.0,
        max_workers: int = DEFAULT_MAX_WORKERS,
        **kwargs: Any,
    ) -> None:
        self.from_email = from_email
        self.host = host
        self.port = int(port)
        self.username = username
        self._password = Secret.of(password)
        self.use_tls = use_tls
        self.use_ssl = use_ssl
        self.timeout = timeout
        kwargs.setdefault("queue_timeout", timeout)  # a send never waits longer for a thread than to send
        super().__init__(max_workers=max_workers, **kwargs)

    def open_connection(self) -> SmtpBackend:
        backend = SmtpBackend(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self._password.reveal(),
            use_tls=self.use_tls,
            use_ssl=self.use_ssl,
            timeout=self.timeout,
            fail_silently=False,
        )
        try:
            backend.open()
        except (OSError, smtplib.SMTPException) as exc:
            raise self._error(exc) from exc
        return backend

    def close_connection(self, connection: Any) -> None:
        connection.close()

    def _error(self, exc: BaseException) -> ProviderError:
        result = classify_smtp_exception(exc, provider=self.name)
        if result is None:  # pragma: no cover - callers only pass SMTP/socket errors
            return TransientError(str(exc), provider=self.name, error_code="smtp_error")
        return ProviderError.from_result(result)

    async def _send(self, message: ChannelMessage) -> SendResult:
        parts = email_parts(message, provider=self.name)
        return await self.run_in_thread(self._deliver, parts, message["id"])

    def build_email(self, parts: EmailParts, notification_id: str) -> EmailMultiAlternatives:
        headers = {**parts.headers, "Message-ID": message_id_header(notification_id, self.from_email)}
        email = EmailMultiAlternatives(
            subject=parts.subject, body=parts.body, from_email=self.from_email, to=[parts.to], headers=headers
        )
        if parts.html:
            email.attach_alternative(parts.html, "text/html")
        return email

    def _deliver(self, parts: EmailParts, notification_id: str) -> SendResult:
        """Runs in a pool thread."""
        email = self.build_email(parts, notification_id)
        for attempt in range(2):
            reused = getattr(self._local, "connection", None) is not None
            backend = self.thread_connection()
            try:
                sent = backend.send_messages([email])
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
                # smtplib sent RSET: the session is still good, unless the server said 421 (closing).
                if getattr(exc, "smtp_code", None) == 421:
                    self.drop_thread_connection()
                raise self._error(exc) from exc
            except (OSError, smtplib.SMTPException) as exc:
                self.drop_thread_connection()
                stale = isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError)
                if reused and stale and attempt == 0:
                    continue  # the server closed our idle pooled session: once more on a new one
                raise self._error(exc) from exc
            if not sent:
                raise PermanentError("SMTP backend sent nothing", provider=self.name, error_code="not_sent")
            return SendResult(SendOutcome.SENT, self.name, provider_message_id=email.extra_headers["Message-ID"])
        raise AssertionError("unreachable")  # pragma: no cover

    def __repr__(self) -> str:
        return (
            f"<SmtpEmailAdapter host={self.host!r} port={self.port} username={self.username!r} "
            f"password={self._password!r} workers={self.max_workers}>"
        )
