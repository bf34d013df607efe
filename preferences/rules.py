"""Pure decision rules over a :class:`PreferenceState`: may we send, and when do quiet hours end.

No I/O here: the dispatcher loads states in bulk (:func:`preferences.cache.preferences_get_many`)
and calls these per (user, channel). Urgency (urgent messages ignore quiet hours) is the
dispatcher's decision; these functions only report what the user asked for.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Collection

from notifications.models import MANDATORY_CATEGORIES

from .state import PreferenceState

__all__ = [
    "ALLOWED_DEFAULT",
    "ALLOWED_MANDATORY",
    "ALLOWED_OPTED_IN",
    "GLOBAL_MUTE",
    "NOT_DEFAULT_CHANNEL",
    "OPTED_OUT",
    "is_allowed",
    "quiet_hours_end",
]

# Reasons for a refusal.
GLOBAL_MUTE = "global_mute"
OPTED_OUT = "opted_out"
NOT_DEFAULT_CHANNEL = "not_default_channel"
# Reasons for a permission (useful in delivery logs).
ALLOWED_OPTED_IN = "opted_in"
ALLOWED_DEFAULT = "default"
ALLOWED_MANDATORY = "mandatory"


def is_allowed(
    state: PreferenceState, *, category: str, channel: str, type_default_channels: Collection[str]
) -> tuple[bool, str]:
    """Decide whether ``channel`` may carry a notification of ``category`` to this user.

    Order: an explicit ``true`` opts in to any channel (also one outside the type's defaults),
    an explicit ``false`` opts out, no entry means "the type's default channels". ``global_mute``
    silences everything. Mandatory categories (security) ignore opt-outs and the global mute, but
    still go only to the type's default channels plus those the user opted in to.
    """
    setting = state.channel_setting(category, channel)
    if category in MANDATORY_CATEGORIES:
        if setting is True:
            return True, ALLOWED_OPTED_IN
        if channel in type_default_channels:
            return True, ALLOWED_MANDATORY
        return False, NOT_DEFAULT_CHANNEL
    if state.global_mute:
        return False, GLOBAL_MUTE
    if setting is False:
        return False, OPTED_OUT
    if setting is True:
        return True, ALLOWED_OPTED_IN
    if channel in type_default_channels:
        return True, ALLOWED_DEFAULT
    return False, NOT_DEFAULT_CHANNEL


def _parse_hhmm(value: str) -> dt.time:
    hours, minutes = value.split(":")
    return dt.time(int(hours), int(minutes))


def quiet_hours_end(state: PreferenceState, now: dt.datetime) -> dt.datetime | None:
    """When the user's quiet hours end (aware, UTC), or None if ``now`` is not inside them.

    The window is in wall-clock time of ``quiet_hours.timezone``; ``start > end`` crosses midnight
    (22:00-07:00). Start is inclusive, end exclusive. Wall times are resolved with :mod:`zoneinfo`,
    so a DST change inside the window is handled: the end is the end's wall time on the right local
    day (an end inside a spring-forward gap, e.g. 02:30, is read with the pre-change offset, i.e.
    03:30 new time; an ambiguous fall-back end takes its first occurrence).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    quiet = state.quiet_hours
    if not quiet or quiet.get("enabled") is not True:
        return None
    try:
        start = _parse_hhmm(quiet["start"])
        end = _parse_hhmm(quiet["end"])
        tz = zoneinfo.ZoneInfo(quiet["timezone"])
    except (KeyError, ValueError, TypeError, zoneinfo.ZoneInfoNotFoundError):
        return None  # a document that slipped past validation never silences anything
    if start == end:
        return None
    local = now.astimezone(tz)
    wall = local.time().replace(tzinfo=None)
    if start < end:
        if not start <= wall < end:
            return None
        end_date = local.date()
    elif wall >= start:
        end_date = local.date() + dt.timedelta(days=1)
    elif wall < end:
        end_date = local.date()
    else:
        return None
    end_at = dt.datetime.combine(end_date, end, tzinfo=tz).astimezone(dt.UTC)
    return end_at if end_at > now else None
