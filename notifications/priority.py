"""Priority classes and lanes: which lane a message travels in, decided by one function.

Why two lanes and not three: `docs/architecture.md`, "Priority lanes".
"""

import enum
import time
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings

from notifications.models import Category, Urgency


class PriorityClass(enum.StrEnum):
    URGENT = "urgent"  # security codes, urgent types: served first everywhere
    TRANSACTIONAL = "transactional"
    BULK = "bulk"  # marketing, digests, campaigns: only what the other classes leave


class Lane(enum.StrEnum):
    PRIORITY = "priority"  # urgent + transactional: `notif.events`, `notif.<channel>`
    BULK = "bulk"  # `notif.events.bulk`, `notif.<channel>.bulk`


def classify(*, category: str, urgency: str, campaign: bool = False) -> PriorityClass:
    """The one classification: marketing and campaigns are bulk whatever their urgency; security
    and urgent types are urgent; a type marked bulk is bulk; everything else is transactional."""
    if campaign or category == Category.MARKETING:
        return PriorityClass.BULK
    if category == Category.SECURITY or urgency == Urgency.URGENT:
        return PriorityClass.URGENT
    if urgency == Urgency.BULK:
        return PriorityClass.BULK
    return PriorityClass.TRANSACTIONAL


def lane_for(priority: str) -> Lane:
    """The lane of a class. With `PRIORITY_LANES` off every class shares the priority lane (one
    FIFO per channel, the behaviour the spike benchmark's baseline measures)."""
    if priority == PriorityClass.BULK and settings.PRIORITY_LANES:
        return Lane.BULK
    return Lane.PRIORITY


def message_priority(message: Mapping[str, Any]) -> PriorityClass:
    """The class a channel message was given when it was built (its `priority`); a message from
    before lanes existed is classified from its category and urgency."""
    try:
        return PriorityClass(message["priority"])
    except (KeyError, ValueError):
        meta = message.get("meta") or {}
        return classify(
            category=str(message.get("category") or ""),
            urgency=str(message.get("urgency") or ""),
            campaign=bool(meta.get("campaign_id")) and not meta.get("test"),
        )


class TypePriorities:
    """Notification type key → class (and whether the type is enabled), re-read every
    `refresh_seconds`: the ingest path classifies and checks each event without a query; an admin
    edit of a type applies within that."""

    def __init__(self, *, refresh_seconds: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._classes: dict[str, PriorityClass] = {}
        self._enabled: frozenset[str] = frozenset()
        self._loaded_at = float("-inf")

    def __call__(self, type_key: str) -> PriorityClass:
        """The type's class; unknown types are transactional (the dispatcher dead-letters them)."""
        self._refresh(type_key)
        return self._classes.get(type_key, PriorityClass.TRANSACTIONAL)

    def cached(self, type_key: object) -> PriorityClass | None:
        """The type's class as last read, without a query; None for a type not seen yet."""
        return self._classes.get(type_key) if isinstance(type_key, str) else None

    def known(self, type_key: str) -> bool:
        """Whether `type_key` is a type producers may publish (it exists and is enabled)."""
        self._refresh(type_key)
        return type_key in self._enabled

    def _refresh(self, type_key: str) -> None:
        """A key not seen yet re-reads the table at once (a type created a moment ago)."""
        if type_key in self._classes and self._clock() - self._loaded_at < self.refresh_seconds:
            return
        from notifications.models import NotificationType

        rows = list(NotificationType.objects.values_list("key", "category", "urgency", "enabled"))
        self._classes = {key: classify(category=category, urgency=urgency) for key, category, urgency, _ in rows}
        self._enabled = frozenset(key for key, _c, _u, enabled in rows if enabled)
        self._loaded_at = self._clock()


type_priority = TypePriorities()
