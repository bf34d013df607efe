"""Quiet-hours messages screened again when released: preferences and kill switches as they are now.

A message deferred at 23:00 is released at 07:00; meanwhile the user may have opted out or an
operator may have pulled a kill switch. The decision is `screening.py`'s, as at dispatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from prometheus_client import Counter

from notifications.bus.topics import channel_topic, delivery_topic
from notifications.channels import ALL_CHANNELS
from notifications.delivery_log import LogEntry, log_day
from notifications.dispatch.catalog import TypeCatalog
from notifications.dispatch.killswitch import KillSwitchBoard
from notifications.dispatch.screening import kill_switch_holds, kill_switch_urgent, screen_channel
from notifications.models import DeliveryStatus
from notifications.priority import Lane
from preferences.cache import preferences_get_many
from preferences.selectors import contact_points_for_users

RELEASED = Counter(
    "dispatcher_released_total", "Quiet-hours messages released, by outcome", ["channel", "status", "reason"]
)

#: A released row as `release_due_messages` reads it: (topic, key, payload JSON, headers JSON).
Row = tuple[str, str, str, str]


@dataclass
class ReleaseScreen:
    """What the re-screening reads: preferences (Redis cache), the type catalogue, the kill switches.
    The dispatcher passes its own (cached) catalogue and board."""

    redis_client: redis.Redis | None = None
    catalog: TypeCatalog = field(default_factory=TypeCatalog)
    switches: KillSwitchBoard = field(default_factory=KillSwitchBoard)

    def screen(self, rows: Sequence[Row]) -> tuple[list[Row], list[LogEntry]]:
        """The rows to put in the outbox (parked ones redirected to `notif.<channel>.delayed`) and the
        delivery-log entries of those suppressed or parked. Rows that are no per-recipient channel
        message (a campaign's deferred batch: its expander screens it) pass unchanged."""
        messages = {i: m for i, row in enumerate(rows) if (m := _channel_message(row)) is not None}
        if not messages:
            return list(rows), []
        user_ids = {int(m["user_id"]) for m in messages.values()}
        states = preferences_get_many(user_ids, redis_client=self.redis_client)
        contacts = contact_points_for_users(user_ids)
        out: list[Row] = []
        entries: list[LogEntry] = []
        for i, row in enumerate(rows):
            message = messages.get(i)
            if message is None:
                out.append(row)
                continue
            user_id, channel = int(message["user_id"]), message["channel"]
            entry = self.catalog.get(message.get("type", ""))
            mode = self.switches.channel_mode(channel)
            urgent = kill_switch_urgent(message)
            to, reason = screen_channel(
                states[user_id],
                contacts.get(user_id),
                category=message.get("category", ""),
                channel=channel,
                default_channels=entry.default_channels if entry is not None else [channel],
                mode=mode,
                urgent=urgent,
            )
            if to is None:
                entries.append(_entry(message, DeliveryStatus.SUPPRESSED, reason))
                continue
            if kill_switch_holds(mode, urgent=urgent):
                entries.append(_entry(message, DeliveryStatus.PARKED, f"kill_switch_{mode}"))
                out.append((channel_topic(channel, "delayed"), *row[1:]))
                continue
            RELEASED.labels(channel, "released", "").inc()
            out.append(row)
        for e in entries:
            RELEASED.labels(e.channel, e.status, e.reason).inc()
        return out, entries


def _channel_message(row: Row) -> dict[str, Any] | None:
    """The row's message when it is one recipient's message for a channel's lane."""
    topic, _key, payload, _headers = row
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or message.get("channel") not in ALL_CHANNELS:
        return None
    channel = message["channel"]
    if topic not in (delivery_topic(channel, Lane.PRIORITY), delivery_topic(channel, Lane.BULK)):
        return None
    if not message.get("event_id") or not str(message.get("user_id", "")).isdigit():
        return None
    return message


def _entry(message: dict[str, Any], status: str, reason: str) -> LogEntry:
    return LogEntry(
        event_id=message["event_id"],
        user_id=int(message["user_id"]),
        channel=message["channel"],
        type=message.get("type", ""),
        status=status,
        reason=reason,
        day=message.get("log_day") or log_day(message.get("created_at")),
    )
