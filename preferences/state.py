"""`PreferenceState`: an immutable, versioned snapshot of one user's preference document."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PreferenceState"]


@dataclass(frozen=True, slots=True)
class PreferenceState:
    """What the dispatcher needs to decide about one user. ``version`` 0 means "no document yet"."""

    user_id: int
    version: int = 0
    document: Mapping[str, Any] = field(default_factory=dict)

    @property
    def global_mute(self) -> bool:
        return self.document.get("global_mute") is True

    @property
    def categories(self) -> Mapping[str, Mapping[str, bool]]:
        return self.document.get("categories") or {}

    @property
    def quiet_hours(self) -> Mapping[str, Any] | None:
        return self.document.get("quiet_hours") or None

    @property
    def frequency_caps(self) -> Mapping[str, Mapping[str, Mapping[str, Any]]]:
        return self.document.get("frequency_caps") or {}

    def caps_for(self, category: str) -> Mapping[str, Mapping[str, Any]]:
        """The caps of one category (``{"<channel>" | "*": {"max": int, "per": str}}``), maybe empty."""
        return self.frequency_caps.get(category) or {}

    def channel_setting(self, category: str, channel: str) -> bool | None:
        """True (opted in), False (opted out) or None (no entry: the type's default applies)."""
        value = (self.categories.get(category) or {}).get(channel)
        return value if isinstance(value, bool) else None
