"""The ready-to-send message on ``notif.<channel>`` (everything a worker needs), its one constructor and its headers."""

from typing import Any, Literal, NotRequired, TypedDict

import orjson

MESSAGE_VERSION = 1


class ChannelMessage(TypedDict):
    """Version 1 of the envelope (JSON, orjson). ``to`` and ``content`` per channel:

    * email: to ``{"email"}``, content ``{"subject", "body", "html"?, "list_unsubscribe"?}``
    * sms: to ``{"phone"}``, content ``{"body"}``
    * push: to ``{"platform", "devices": [[platform, token], ...]}``, content ``{"title", "body", "data"}``
    * inapp: to ``{"user_id"}``, content ``{"title", "body", "data"}``
    * webhook: to ``{"url"}``, content ``{"payload"}``
    """

    v: int
    id: str  # the dedup (idempotency) key, see idempotency_key()
    event_id: str  # the event's id (a campaign launch's id for campaign messages)
    user_id: int
    channel: str
    type: str  # the notification type's key, e.g. "order.shipped"
    category: str
    urgency: str
    priority: Literal["urgent", "transactional", "bulk"]  # notifications.priority: decides the lane
    created_at: str  # ISO 8601
    locale: str  # e.g. "de-ch"
    to: dict[str, Any]
    content: dict[str, Any]  # rendered
    meta: NotRequired[dict[str, Any]]  # e.g. {"campaign_id", "launch_id", "throttle"}
    log_day: NotRequired[str]  # the delivery-log row's day (ISO date): the event's acceptance day


def idempotency_key(event_id: str, user_id: int | str, channel: str, platform: str | None = None) -> str:
    """The dedup key: event id + user id + channel (+ the push platform of a per-platform message)."""
    key = f"{event_id}:{user_id}:{channel}"
    return f"{key}:{platform}" if platform else key


def channel_message(
    *,
    event_id: str,
    user_id: int,
    channel: str,
    type: str,
    category: str,
    urgency: str,
    priority: str,
    created_at: str,
    locale: str,
    to: dict[str, Any],
    content: dict[str, Any],
    meta: dict[str, Any] | None = None,
    platform: str | None = None,
    log_day: str | None = None,
) -> ChannelMessage:
    """A v1 channel message, its id made by :func:`idempotency_key`; ``meta`` is left out when None."""
    message: ChannelMessage = {
        "v": MESSAGE_VERSION,
        "id": idempotency_key(event_id, user_id, channel, platform),
        "event_id": event_id,
        "user_id": user_id,
        "channel": channel,
        "type": type,
        "category": category,
        "urgency": urgency,
        "priority": priority,  # type: ignore[typeddict-item]
        "created_at": created_at,
        "locale": locale,
        "to": to,
        "content": content,
    }
    if meta is not None:
        message["meta"] = meta
    if log_day is not None:
        message["log_day"] = log_day
    return message


def split_by_platform(message: ChannelMessage) -> list[ChannelMessage]:
    """A push message becomes one message per platform (FCM, APNs): each goes to its own provider,
    with its own rate limit and outcome, so its dedup key carries the platform."""
    if message["channel"] != "push":
        return [message]
    platforms: dict[str, list] = {}
    for platform, token in message["to"]["devices"]:
        platforms.setdefault(platform, []).append([platform, token])
    return [
        channel_message(
            event_id=message["event_id"],
            user_id=message["user_id"],
            channel=message["channel"],
            type=message["type"],
            category=message["category"],
            urgency=message["urgency"],
            priority=message["priority"],
            created_at=message["created_at"],
            locale=message["locale"],
            to={"platform": platform, "devices": devices},
            content=message["content"],
            meta=message.get("meta"),
            platform=platform,
            log_day=message.get("log_day"),
        )
        for platform, devices in sorted(platforms.items())
    ]


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
