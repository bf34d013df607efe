"""Reading a channel message in an adapter: required fields, device tokens, ids for provider-side dedup."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.errors import InvalidMessageError

#: uuid5 namespace for ids derived from notification ids (APNs ``apns-id``, SMTP ``Message-ID``).
#: Fixed forever: changing it changes every derived id and defeats provider-side dedup on replays.
NOTIFICATION_NAMESPACE = uuid.UUID("5b0e9f3c-8c1e-4d1a-9a43-6f1f0c6e2a71")


def require(message: ChannelMessage, section: str, key: str, *, provider: str) -> Any:
    """``message[section][key]``, or :class:`InvalidMessageError` (the message is poison, not retryable)."""
    part = message.get(section)  # type: ignore[misc]
    value = part.get(key) if isinstance(part, Mapping) else None
    if value in (None, "", [], {}):
        raise InvalidMessageError(
            f"message {message.get('id')!r} has no {section}.{key}", provider=provider, error_code="invalid_message"
        )
    return value


def delivery_key(message_id: str, token: str, *, fanout: bool) -> str:
    """The idempotency key of one device delivery: the notification id, per device when a message fans out.

    A message to one device keeps the notification id itself; with several devices each request gets
    ``<id>:<sha256(token)[:12]>`` so the provider sees one stable key per (notification, device) and
    a retry of the same envelope reuses it.
    """
    if not fanout:
        return message_id
    return f"{message_id}:{hashlib.sha256(token.encode()).hexdigest()[:12]}"


def derived_uuid(key: str) -> uuid.UUID:
    """A stable UUID for a notification (or device delivery) key."""
    return uuid.uuid5(NOTIFICATION_NAMESPACE, key)


def devices_for(message: ChannelMessage, platform: str) -> list[str]:
    """The message's device tokens for one push platform (``to.devices`` is ``[[platform, token], ...]``)."""
    devices = (message.get("to") or {}).get("devices") or []
    tokens: list[str] = []
    for entry in devices:
        if isinstance(entry, list | tuple) and len(entry) == 2 and entry[0] == platform and entry[1]:
            tokens.append(str(entry[1]))
    return list(dict.fromkeys(tokens))
