"""An in-memory view of notification types and their templates, refreshed every few seconds.

The dispatcher looks a type up for every event; reading it from PostgreSQL each time would cost a
query per event. A refresh reloads everything only when something changed (max(updated_at) and
counts), so an admin edit is live within `REFRESH_SECONDS`.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db.models import Count, Max

from notifications.dispatch.templating import locale_candidates
from notifications.models import NotificationTemplate, NotificationType

REFRESH_SECONDS = 3.0


@dataclass
class TypeEntry:
    key: str
    category: str
    urgency: str
    default_channels: list[str]
    # channel → locale → template
    templates: dict[str, dict[str, NotificationTemplate]] = field(default_factory=dict)
    # (channel, locale) → the template chosen by the fallback chain; the entry is rebuilt on refresh
    _chosen: dict[tuple[str, str], NotificationTemplate | None] = field(default_factory=dict, repr=False)

    def template_for(self, channel: str, locale: str) -> NotificationTemplate | None:
        try:
            return self._chosen[channel, locale]
        except KeyError:
            pass
        chosen = None
        by_locale = self.templates.get(channel) or {}
        for candidate in locale_candidates(locale):
            if candidate in by_locale:
                chosen = by_locale[candidate]
                break
        if len(self._chosen) < 10_000:  # locales come from profiles: bound the memory
            self._chosen[channel, locale] = chosen
        return chosen


class TypeCatalog:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, TypeEntry] = {}
        self._fingerprint: tuple | None = None
        self._checked_at = float("-inf")

    def get(self, key: str) -> TypeEntry | None:
        self.refresh()
        return self._entries.get(key)

    def refresh(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._checked_at < REFRESH_SECONDS:
            return
        self._checked_at = now
        fingerprint = (
            tuple(NotificationType.objects.aggregate(m=Max("updated_at"), c=Count("id")).values()),
            tuple(NotificationTemplate.objects.aggregate(m=Max("updated_at"), c=Count("id")).values()),
        )
        if fingerprint == self._fingerprint and not force:
            return
        entries: dict[str, TypeEntry] = {}
        for ntype in NotificationType.objects.filter(enabled=True):
            entries[ntype.key] = TypeEntry(
                key=ntype.key,
                category=ntype.category,
                urgency=ntype.urgency,
                default_channels=list(ntype.default_channels or []),
            )
        for template in NotificationTemplate.objects.select_related("notification_type"):
            entry = entries.get(template.notification_type.key)
            if entry is not None:
                entry.templates.setdefault(template.channel, {})[template.locale] = template
        self._entries = entries
        self._fingerprint = fingerprint
