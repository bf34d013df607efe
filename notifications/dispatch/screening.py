"""Screening one recipient and channel: preferences → contact point → kill switch → frequency caps → quiet hours.

The dispatcher and the campaign expander both decide with these, each batching its own way
(docs/architecture.md, "Dispatcher" and "Campaigns").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from notifications.channels import ALL_CHANNELS, Channel
from notifications.dispatch.catalog import TypeEntry
from notifications.models import KillSwitchMode
from notifications.priority import PriorityClass, message_priority
from preferences.frequency import CapRequest, frequency_cap_take_many
from preferences.rules import is_allowed, quiet_hours_end
from preferences.selectors import ContactPoints
from preferences.state import PreferenceState

# Reasons for a suppression, beside the preference rules' own (opted_out, global_mute, ...).
UNKNOWN_RECIPIENT = "unknown_recipient"
NO_CONTACT_POINT = "no_contact_point"
KILL_SWITCH = "kill_switch"
FREQUENCY_CAP = "frequency_cap"


def candidate_channels(entry: TypeEntry, state: PreferenceState) -> list[str]:
    """The type's default channels plus any the user explicitly opted in to for this category."""
    channels = list(entry.default_channels)
    for channel, enabled in (state.categories.get(entry.category) or {}).items():
        if enabled is True and channel not in channels and channel in ALL_CHANNELS:
            channels.append(channel)
    return channels


def address_for(channel: str, contact: ContactPoints) -> dict[str, Any] | None:
    """Where this channel reaches the user, or None when it cannot (no or invalid contact point)."""
    if channel == Channel.EMAIL:
        return {"email": contact.email} if contact.email else None
    if channel == Channel.SMS:
        return {"phone": contact.phone} if contact.phone else None
    if channel == Channel.PUSH:
        return {"devices": [list(d) for d in contact.devices]} if contact.devices else None
    if channel == Channel.WEBHOOK:
        return {"url": contact.webhook_url} if contact.webhook_url else None
    if channel == Channel.INAPP:
        return {"user_id": contact.user_id}
    return None


def kill_switch_drops(mode: str | None, *, urgent: bool) -> bool:
    """``drop_non_urgent`` suppresses what is not urgent."""
    return mode == KillSwitchMode.DROP_NON_URGENT and not urgent


def kill_switch_holds(mode: str | None, *, urgent: bool) -> bool:
    """``pause`` holds everything back, ``delay`` what is not urgent."""
    return mode == KillSwitchMode.PAUSE or (mode == KillSwitchMode.DELAY and not urgent)


def kill_switch_urgent(message: Mapping[str, Any]) -> bool:
    """Whether a built message passes ``delay`` and ``drop_non_urgent``: its class is urgent (an
    urgent type or the security category). Workers and the quiet-hours release decide with it."""
    return message_priority(message) == PriorityClass.URGENT


def screen_channel(
    state: PreferenceState,
    contact: ContactPoints | None,
    *,
    category: str,
    channel: str,
    default_channels: Sequence[str],
    mode: str | None,
    urgent: bool,
) -> tuple[dict[str, Any] | None, str]:
    """The first three steps: where the message goes (``to``), or None and the reason it is suppressed.

    ``contact`` is None for a user we do not know; ``mode`` is the channel's kill switch (None where
    the caller applies it to a whole batch).
    """
    if contact is None:
        return None, UNKNOWN_RECIPIENT
    # Without a document (most users) a default channel is allowed: no rules to evaluate.
    if state.document or channel not in default_channels:
        allowed, reason = is_allowed(state, category=category, channel=channel, type_default_channels=default_channels)
        if not allowed:
            return None, reason
    to = address_for(channel, contact)
    if to is None:
        return None, NO_CONTACT_POINT
    if kill_switch_drops(mode, urgent=urgent):
        return None, KILL_SWITCH
    return to, ""


@dataclass(slots=True)
class Screened:
    """A recipient and channel that passed :func:`screen_channel`; callers extend it with their own data."""

    user_id: int
    channel: str
    category: str
    state: PreferenceState
    to: dict[str, Any]


def frequency_cap_refusals(client: redis.Redis, screened: Sequence[Screened], *, now: datetime) -> set[int]:
    """The fourth step for a whole batch: takes a unit of each one's caps in one Redis pipeline, in
    order, and returns the indexes the caps refuse. Only users whose document has caps for the
    category are sent to Redis."""
    capped = [i for i, s in enumerate(screened) if s.state.document and s.state.caps_for(s.category)]
    decisions = frequency_cap_take_many(
        client,
        [
            CapRequest(s.user_id, s.category, s.channel, s.state.caps_for(s.category))
            for s in (screened[i] for i in capped)
        ],
        now=now,
    )
    return {i for i, decision in zip(capped, decisions, strict=True) if not decision.allowed}


class QuietHours:
    """The fifth step: when a user's quiet hours end, worked out once per user and batch."""

    __slots__ = ("_ends", "now")

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._ends: dict[int, datetime | None] = {}

    def end(self, state: PreferenceState, *, urgent: bool) -> datetime | None:
        """The end of the window ``now`` is in; None outside one, for urgent messages and without a document."""
        if urgent or not state.document:
            return None
        user_id = state.user_id
        if user_id in self._ends:
            return self._ends[user_id]
        end = self._ends[user_id] = quiet_hours_end(state, self.now)
        return end
