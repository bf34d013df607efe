"""The ready-to-send message on `notif.<channel>`: everything a worker needs, no preference lookups.

Version 1 of the envelope (JSON, orjson):

    {
      "v": 1,
      "id": "<event_id>:<user_id>:<channel>",   # idempotency (dedup) key
      "event_id": "<uuid>", "user_id": 42, "channel": "email",
      "type": "order.shipped", "category": "transactional", "urgency": "normal",
      "priority": "urgent" | "transactional" | "bulk",   # notifications.priority: decides the lane
      "created_at": "<iso8601>", "locale": "de-ch",
      "to": {...},                               # per channel, see below
      "content": {...},                          # rendered, per channel, see below
      "meta": {"campaign_id": ..., "launch_id": ...}   # optional
    }

`to` and `content` per channel:
    email:   to {"email"}                    content {"subject", "body", "html"?, "list_unsubscribe"?}
    sms:     to {"phone"}                    content {"body"}
    push:    to {"devices": [[platform, token], ...]}   content {"title", "body", "data"}
    inapp:   to {"user_id"}                  content {"title", "body", "data"}
    webhook: to {"url"}                      content {"payload"}
Kafka headers: idempotency-key (= id), attempt, first-attempt-at, not-before, origin-topic,
error-class, error, errors (JSON history), replay.
"""

from typing import Any, Literal, NotRequired, TypedDict

import orjson

MESSAGE_VERSION = 1


class ChannelMessage(TypedDict):
    v: int
    id: str
    event_id: str
    user_id: int
    channel: str
    type: str
    category: str
    urgency: str
    priority: Literal["urgent", "transactional", "bulk"]
    created_at: str
    locale: str
    to: dict[str, Any]
    content: dict[str, Any]
    meta: NotRequired[dict[str, Any]]


def idempotency_key(event_id: str, user_id: int | str, channel: str) -> str:
    """The dedup key of the design: event id + user id + channel."""
    return f"{event_id}:{user_id}:{channel}"


def encode(message: ChannelMessage) -> bytes:
    return orjson.dumps(message)


def decode(raw: bytes) -> ChannelMessage:
    return orjson.loads(raw)


class Header:
    """Kafka header names (stable; other services and the DLQ admin read them)."""

    IDEMPOTENCY_KEY = "idempotency-key"
    ATTEMPT = "attempt"
    FIRST_ATTEMPT_AT = "first-attempt-at"
    NOT_BEFORE = "not-before"
    ORIGIN_TOPIC = "origin-topic"
    ERROR_CLASS = "error-class"
    ERROR = "error"
    ERRORS = "errors"
    PROVIDER = "provider"
    REPLAY = "replay"


def headers_dict(raw: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: (v.decode() if isinstance(v, bytes) else (v or "")) for k, v in (raw or [])}
