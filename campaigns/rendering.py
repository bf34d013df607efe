"""Rendering a campaign's copy for one recipient (expansion, preview, "send a test to me").

The copy is a Django template per channel field (the same engines and field sets as notification
templates, :mod:`notifications.dispatch.templating`). The context is deliberately small and the
same everywhere: ``user`` (id, email, first_name), ``profile`` (locale, attributes), ``campaign``
(id, name) and ``unsubscribe_url``. A field without template syntax renders once per batch, not
once per recipient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

from notifications.channels import Channel
from notifications.dispatch.templating import (
    CHANNEL_FIELDS,
    RenderError,
    build_context,
    locale_candidates,
    render_fields,
)

SAMPLE_USER = {"id": 0, "email": "sample@example.com", "first_name": "Sam"}
SAMPLE_PROFILE = {"locale": "en", "attributes": {"country": "DE", "plan": "pro"}}
SAMPLE_UNSUBSCRIBE_URL = "https://example.com/unsubscribe/sample"


def build_copy_context(
    *, user: dict[str, Any], profile: dict[str, Any], campaign: dict[str, Any], unsubscribe_url: str | None
) -> dict[str, Any]:
    context: dict[str, Any] = {"user": user, "profile": profile, "campaign": campaign}
    if unsubscribe_url:
        context["unsubscribe_url"] = unsubscribe_url
    return context


def build_fanout_context(
    *, data: dict[str, Any], event: dict[str, Any], user: dict[str, Any], unsubscribe_url: str | None
) -> dict[str, Any]:
    """A fanout event's template context: the dispatcher's for one event (the data at the top level and
    under ``data``, plus ``event`` and ``user``), so a type's templates render the same either way."""
    context = build_context(data=data, event=event, user=user)
    if unsubscribe_url:
        context["unsubscribe_url"] = unsubscribe_url
    return context


def _is_static(source: str) -> bool:
    return "{" not in source


@dataclass
class CopyBook:
    """The copy of one campaign, indexed by channel and locale, with static fields pre-rendered."""

    by_channel: dict[str, dict[str, Any]] = field(default_factory=dict)
    _mentions: dict[tuple, bool] = field(default_factory=dict)

    @classmethod
    def from_copies(cls, copies) -> CopyBook:
        book = cls()
        for copy in copies:
            book.by_channel.setdefault(copy.channel, {})[copy.locale or ""] = copy
        return book

    def copy_for(self, channel: str, locale: str):
        by_locale = self.by_channel.get(channel) or {}
        for candidate in locale_candidates(locale):
            if candidate in by_locale:
                return by_locale[candidate]
        return None

    def has_channel(self, channel: str) -> bool:
        return bool(self.by_channel.get(channel))

    def mentions_unsubscribe(self, copy) -> bool:
        key = (type(copy).__name__, copy.pk, copy.updated_at)
        if key not in self._mentions:
            fields = (getattr(copy, name, "") or "" for name, _ in CHANNEL_FIELDS[copy.channel])
            self._mentions[key] = any("unsubscribe_url" in text for text in fields)
        return self._mentions[key]


def render_copy(copy, channel: str, context: dict[str, Any]) -> dict[str, Any]:
    """Render the channel's fields of ``copy``; raises RenderError."""
    return render_fields(copy, channel, context)


def validate_copy(copy) -> None:
    """Refuse copy that does not render with a sample recipient (field-keyed ValidationError)."""
    if copy.channel not in CHANNEL_FIELDS:
        raise ValidationError({"channel": "Unknown channel."})
    fields = [name for name, _ in CHANNEL_FIELDS[copy.channel]]
    if copy.channel != Channel.WEBHOOK and not any(getattr(copy, f, "") for f in fields):
        raise ValidationError(f"Write at least one of: {', '.join(fields)} (the fields {copy.channel} uses).")
    context = build_copy_context(
        user=SAMPLE_USER,
        profile=SAMPLE_PROFILE,
        campaign={"id": copy.campaign_id or 0, "name": "sample"},
        unsubscribe_url=SAMPLE_UNSUBSCRIBE_URL,
    )
    try:
        render_fields(copy, copy.channel, context)
    except RenderError as exc:
        name, _, message = str(exc).partition(": ")
        key = name if name in fields else "__all__"
        raise ValidationError({key: f"Does not render with a sample recipient: {message}"}) from exc


def preview_copy(copy) -> dict[str, Any] | str:
    """The copy rendered for the sample recipient, or the error text."""
    context = build_copy_context(
        user=SAMPLE_USER,
        profile=SAMPLE_PROFILE,
        campaign={"id": copy.campaign_id or 0, "name": getattr(copy.campaign, "name", "")},
        unsubscribe_url=SAMPLE_UNSUBSCRIBE_URL,
    )
    try:
        return render_fields(copy, copy.channel, context)
    except RenderError as exc:
        return f"ERROR: {exc}"


class StaticFieldCache:
    """Rendered output of copy fields without template syntax, keyed by (copy id, updated_at)."""

    def __init__(self) -> None:
        self._cache: dict[tuple, dict[str, Any] | None] = {}

    def static_render(self, copy, channel: str) -> dict[str, Any] | None:
        """The rendering if every field of the copy is static, else None."""
        key = (type(copy).__name__, copy.pk, copy.updated_at, channel)
        if key not in self._cache:
            sources = [getattr(copy, name, "") or "" for name, _ in CHANNEL_FIELDS[channel]]
            if all(_is_static(s) for s in sources):
                self._cache[key] = render_fields(copy, channel, {})
            else:
                self._cache[key] = None
        cached = self._cache[key]
        return dict(cached) if cached is not None else None
