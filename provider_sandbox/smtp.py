"""SMTP sandbox: a real ``aiosmtpd`` server on the shared loop, plus its HTTP control port.

* contract rate limit at ``MAIL FROM``: ``451 4.7.1``
* per recipient at ``RCPT TO``: ``options.rules``, then bounces (``options.bounce_pattern``,
  ``unregistered``: ``550 5.1.1``), ``invalid`` (``553 5.1.3``), ``fail5xx-N`` / ``fail429-N`` (``451``)
* ``DATA`` waits the configured latency, records the message, answers ``250 2.0.0 Ok: queued as <ID>``;
  idempotency key: ``X-Notification-Id`` / ``Idempotency-Key``, else ``Message-ID``
* AUTH only with ``options.auth`` (PLAIN/LOGIN without TLS)"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import re
import secrets
import time
import weakref
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from provider_sandbox.base import ProviderSandbox
from provider_sandbox.config import ProviderConfig
from provider_sandbox.faults import BAD_REQUEST, INVALID_TOKEN, THROTTLED, TRANSIENT
from provider_sandbox.listener import HttpListener
from provider_sandbox.messages import Request, Response

KEY_HEADERS = ("X-Notification-Id", "Idempotency-Key", "X-Idempotency-Key")
RATE_LIMIT_REPLY = "451 4.7.1 Rate limit exceeded, try again later"


class _Handler:
    """aiosmtpd hook object delegating to the sandbox."""

    def __init__(self, sandbox: SmtpSandbox) -> None:
        self.sandbox = sandbox

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        return self.sandbox.on_mail(envelope, address, mail_options)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        return self.sandbox.on_rcpt(envelope, address, rcpt_options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self.sandbox.on_data(envelope)


class SmtpSandbox(ProviderSandbox):
    """An SMTP relay that records messages and can bounce or defer recipients."""

    name = "smtp"

    def __init__(self, config: ProviderConfig, *, control_port: int = 18126, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.control_port_requested = control_port
        self.control_port: int | None = None
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._times: weakref.WeakKeyDictionary[Envelope, tuple[float, float]] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str) -> dict[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make_protocol, host, self.config.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._listener = HttpListener(self.handle, name="smtp-control")
        self.control_port = await self._listener.start(host, self.control_port_requested)
        return {"smtp": self.port, "smtp_control": self.control_port}

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for session in list(self._sessions):
                if session.transport is not None:
                    session.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)
            self._server = None
        await super().stop()

    def _make_protocol(self) -> SMTP:
        auth = self.config.options.get("auth")
        kwargs: dict[str, Any] = {}
        if auth:
            kwargs = {"auth_require_tls": False, "authenticator": self._authenticate}
        protocol = SMTP(
            _Handler(self),
            hostname=self.config.options.get("hostname") or "sandbox.smtp.local",
            ident="notification-platform sandbox ESMTP",
            enable_SMTPUTF8=True,
            data_size_limit=64 * 1024 * 1024,
            **kwargs,
        )
        self._sessions.add(protocol)
        return protocol

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        auth = self.config.options.get("auth")
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        if auth == "any":
            return AuthResult(success=True, handled=False)
        users = auth if isinstance(auth, dict) else {}
        login = auth_data.login.decode("utf-8", "replace")
        ok = login in users and users[login] == auth_data.password.decode("utf-8", "replace")
        if not ok:
            self.counters.errors["auth"] += 1
        return AuthResult(success=ok, handled=False)

    async def handle(self, request: Request) -> Response:
        """The companion HTTP port only serves the control API."""
        if request.path.startswith("/_sandbox/"):
            return await super().handle(request)
        return Response.json(404, {"error": "the SMTP sandbox speaks SMTP on its own port"})

    # ------------------------------------------------------------------ SMTP hooks
    def on_mail(self, envelope: Envelope, address: str, mail_options: list[str]) -> str:
        t_mono, t_wall = time.monotonic(), time.time()
        self.counters.received += 1
        if self.limiter.try_acquire(t_mono) is not None:
            self.counters.rate_limited += 1
            return RATE_LIMIT_REPLY
        self._times[envelope] = (t_mono, t_wall)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    def on_rcpt(self, envelope: Envelope, address: str, rcpt_options: list[str]) -> str:
        reply = self._rcpt_reply(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    def _rcpt_reply(self, address: str) -> str | None:
        options = self.config.options
        for rule in options.get("rules") or []:
            if re.search(str(rule.get("pattern", "")), address):
                self.counters.errors["rule"] += 1
                return f"{int(rule.get('code', 550))} {rule.get('message', '5.0.0 Rejected by sandbox rule')}"
        bounce = options.get("bounce_pattern")
        if bounce and re.search(bounce, address):
            self.counters.errors[INVALID_TOKEN] += 1
            return self._user_unknown(address)
        fault = self.faults.decide([address], self.config.errors)
        if fault is None:
            return None
        self.counters.errors[fault.kind] += 1
        if fault.kind == INVALID_TOKEN:
            return self._user_unknown(address)
        if fault.kind == BAD_REQUEST:
            return f"553 5.1.3 <{address}>: Recipient address rejected: Bad recipient address syntax"
        if fault.kind == THROTTLED:
            return RATE_LIMIT_REPLY
        assert fault.kind == TRANSIENT  # noqa: S101 - the fault kinds are a closed set
        return f"451 4.3.0 <{address}>: Temporary failure, try again later"

    @staticmethod
    def _user_unknown(address: str) -> str:
        return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"

    async def on_data(self, envelope: Envelope) -> str:
        await self.delay(list(envelope.rcpt_tos))
        raw = envelope.original_content or (
            envelope.content if isinstance(envelope.content, bytes) else str(envelope.content or "").encode()
        )
        headers = email.parser.BytesHeaderParser().parsebytes(raw)
        keys = [str(headers[h]).strip() for h in KEY_HEADERS if headers.get(h)]
        if not keys and headers.get("Message-ID"):
            keys.append(str(headers["Message-ID"]).strip())
        queue_id = secrets.token_hex(5).upper()
        t_mono, t_wall = self._times.pop(envelope, None) or (time.monotonic(), time.time())
        self.recorder.add(
            t_mono=t_mono,
            t_wall=t_wall,
            recipients=list(envelope.rcpt_tos),
            keys=keys,
            provider_id=queue_id,
            method="SMTP",
            path="DATA",
            content_type="message/rfc822",
            raw=raw,
            meta={"mail_from": envelope.mail_from},
        )
        self.counters.accepted += 1
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def extra_stats(self) -> dict[str, Any]:
        return {"control_port": self.control_port}
