"""The parts of an e-mail channel message both e-mail adapters need: recipient, subject, bodies, headers."""

from __future__ import annotations

from dataclasses import dataclass, field

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.errors import InvalidContactError
from notifications.providers.message_fields import derived_uuid, require

NOTIFICATION_ID_HEADER = "X-Notification-Id"


@dataclass(frozen=True, slots=True)
class EmailParts:
    to: str
    subject: str
    body: str
    html: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def list_unsubscribe_headers(value: object) -> dict[str, str]:
    """RFC 2369 ``List-Unsubscribe`` plus RFC 8058 one-click ``List-Unsubscribe-Post`` for an https/http URL."""
    if not value:
        return {}
    values = value if isinstance(value, list | tuple) else [value]
    targets = [str(v).strip() for v in values if str(v).strip()]
    if not targets:
        return {}
    bracketed = [t if t.startswith("<") else f"<{t}>" for t in targets]
    headers = {"List-Unsubscribe": ", ".join(bracketed)}
    if any(t.strip("<>").lower().startswith(("https://", "http://")) for t in targets):
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return headers


def email_parts(message: ChannelMessage, *, provider: str) -> EmailParts:
    """Validated parts of an e-mail message; raises InvalidMessageError / InvalidContactError."""
    to = str(require(message, "to", "email", provider=provider)).strip()
    if "@" not in to or any(c in to for c in "\r\n"):
        raise InvalidContactError(f"{to!r} is not an e-mail address", provider=provider, error_code="bad_address")
    content = message.get("content") or {}
    subject = " ".join(str(require(message, "content", "subject", provider=provider)).split())  # no header folding
    body = str(content.get("body") or "")
    html = str(content.get("html") or "")
    if not body and not html:
        require(message, "content", "body", provider=provider)
    headers = {NOTIFICATION_ID_HEADER: message["id"], **list_unsubscribe_headers(content.get("list_unsubscribe"))}
    return EmailParts(to=to, subject=subject, body=body, html=html, headers=headers)


def message_id_header(notification_id: str, from_email: str) -> str:
    """A stable RFC 5322 ``Message-ID`` for a notification (a retry carries the same one)."""
    address = from_email.rsplit("<", 1)[-1].rstrip(">").strip()
    domain = address.rsplit("@", 1)[-1] if "@" in address else "notifications.invalid"
    return f"<{derived_uuid(notification_id)}@{domain}>"
