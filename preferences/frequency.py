"""Per-user frequency caps ("at most 3 marketing messages a day"), counted atomically in Redis in fixed
UTC windows; Redis errors fail open. See docs/architecture.md, "Preferences" (Frequency caps)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings

from notifications.redis_connect import REDIS_ERRORS
from notifications.redis_multi import ScriptCall, evalsha_pipelined

from .metrics import FREQUENCY_CAP_FAIL_OPEN
from .scripts import lua_script

__all__ = [
    "CapDecision",
    "CapRequest",
    "frequency_cap_take",
    "frequency_cap_take_many",
    "window_bounds",
]

logger = logging.getLogger(__name__)

EXPIRY_GRACE_SECONDS = 60
_WEEK_ORIGIN = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)  # a Monday
_SECONDS = {"hour": 3600, "day": 86400, "week": 7 * 86400}


@dataclass(frozen=True, slots=True)
class CapRequest:
    """One intended send; ``caps`` is the category's caps, i.e. ``state.caps_for(category)``."""

    user_id: int
    category: str
    channel: str
    caps: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CapDecision:
    """Outcome of a take. When refused, ``limited_by`` is ``"<channel>"`` or ``"*"`` and ``reset_at``
    is when that window ends (the earliest time a retry can succeed)."""

    allowed: bool
    limited_by: str | None = None
    per: str | None = None
    reset_at: dt.datetime | None = None
    fail_open: bool = False


ALLOWED = CapDecision(allowed=True)


def window_bounds(per: str, now: dt.datetime) -> tuple[int, int]:
    """Unix seconds (start, end) of the fixed UTC window of kind ``per`` that contains ``now``."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    length = _SECONDS[per]
    if per == "week":
        offset = int((now - _WEEK_ORIGIN).total_seconds())
        start = int(_WEEK_ORIGIN.timestamp()) + (offset // length) * length
    else:
        epoch = int(now.timestamp())
        start = epoch - epoch % length
    return start, start + length


def _applicable(request: CapRequest) -> list[tuple[str, int, str]]:
    """(scope, max, per) of the caps that apply: the channel's own cap, then the category-wide one."""
    found = []
    for scope in (request.channel, "*"):
        cap = request.caps.get(scope)
        if not isinstance(cap, Mapping):
            continue
        maximum, per = cap.get("max"), cap.get("per")
        if isinstance(maximum, int) and not isinstance(maximum, bool) and maximum >= 0 and per in _SECONDS:
            found.append((scope, maximum, per))
    return found


def _key(request: CapRequest, scope: str, per: str, start: int) -> str:
    prefix = settings.REDIS_KEY_PREFIX
    return f"{prefix}fcap:{{{request.user_id}}}:{request.category}:{scope}:{per}:{start}"


def frequency_cap_take_many(
    client: redis.Redis, requests: Sequence[CapRequest], *, now: dt.datetime, fail_open: bool = True
) -> list[CapDecision]:
    """Take one unit for each request, in order, in one pipeline (one script call per capped request).

    Requests are applied in sequence, so two requests for the same user and category in one batch
    see each other. Requests without applicable caps are allowed without touching Redis.
    """
    decisions: list[CapDecision | None] = [None] * len(requests)
    calls: list[tuple[int, list[tuple[str, int, str]], list[int]]] = []
    script_calls: list[ScriptCall] = []
    for index, request in enumerate(requests):
        caps = _applicable(request)
        if not caps:
            decisions[index] = ALLOWED
            continue
        keys, args, ends = [], [], []
        for scope, maximum, per in caps:
            start, end = window_bounds(per, now)
            keys.append(_key(request, scope, per, start))
            ttl = max(1, end - int(now.timestamp())) + EXPIRY_GRACE_SECONDS
            args += [maximum, ttl]
            ends.append(end)
        script_calls.append((keys, args))
        calls.append((index, caps, ends))
    if calls:
        try:
            results = evalsha_pipelined(client, lua_script("frequency_cap"), script_calls)
        except REDIS_ERRORS as exc:
            if not fail_open:
                raise
            FREQUENCY_CAP_FAIL_OPEN.inc(len(calls))
            logger.warning("frequency caps unavailable, allowing", extra={"error": str(exc), "count": len(calls)})
            for index, _caps, _ends in calls:
                decisions[index] = CapDecision(allowed=True, fail_open=True)
        else:
            for (index, caps, ends), result in zip(calls, results, strict=True):
                refused = int(result[0])
                if refused == 0:
                    decisions[index] = ALLOWED
                else:
                    scope, _maximum, per = caps[refused - 1]
                    decisions[index] = CapDecision(
                        allowed=False,
                        limited_by=scope,
                        per=per,
                        reset_at=dt.datetime.fromtimestamp(ends[refused - 1], tz=dt.UTC),
                    )
    return [decision if decision is not None else ALLOWED for decision in decisions]


def frequency_cap_take(
    client: redis.Redis,
    *,
    user_id: int,
    category: str,
    channel: str,
    caps: Mapping[str, Mapping[str, Any]],
    now: dt.datetime,
    fail_open: bool = True,
) -> CapDecision:
    """Take one unit of the caps that apply to (user, category, channel); see the module docstring."""
    request = CapRequest(user_id=user_id, category=category, channel=channel, caps=caps)
    return frequency_cap_take_many(client, [request], now=now, fail_open=fail_open)[0]
