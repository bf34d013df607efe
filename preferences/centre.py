"""The hosted preference centre: the category-by-channel grid a recipient sees behind their signed
e-mail link, and applying what they submit.

The grid controls opt-outs only: a ticked box means "not opted out" (an explicit ``false`` is removed,
so the notification type's default applies again; an explicit opt-in stays), an unticked box writes
``false``. Security notifications cannot be turned off and are shown ticked and disabled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.utils.translation import gettext_lazy as _

from notifications.channels import ALL_CHANNELS
from notifications.models import MANDATORY_CATEGORIES, Category

from . import services
from .cache import preferences_get
from .models import PreferenceDocument
from .state import PreferenceState

__all__ = ["CHANNEL_LABELS", "GridRow", "category_label", "field_name", "preference_grid", "preferences_apply_grid"]

#: The page's names of categories and channels (translated; `locale/<lang>/LC_MESSAGES/django.po`).
CATEGORY_LABELS = {
    "transactional": _("Transactional"),
    "security": _("Account / security"),
    "marketing": _("Marketing"),
    "product": _("Product updates"),
    "social": _("Social"),
}
CHANNEL_LABELS = {
    "email": _("E-mail"),
    "push": _("Push"),
    "sms": _("SMS"),
    "inapp": _("In-app"),
    "webhook": _("Webhook"),
}


def category_label(category: str) -> str:
    return str(CATEGORY_LABELS.get(category, category))


@dataclass(frozen=True)
class GridRow:
    category: str
    label: str
    mandatory: bool
    cells: list[tuple[str, str, bool]]  # (channel, field name, ticked)


def field_name(category: str, channel: str) -> str:
    return f"pref-{category}-{channel}"


def preference_grid(user_id: int) -> tuple[PreferenceState, list[GridRow]]:
    """The recipient's current state and one row per category (security first, disabled)."""
    state = preferences_get(user_id)
    rows = []
    for category, label in Category.choices:
        mandatory = category in MANDATORY_CATEGORIES
        cells = [
            (
                channel,
                field_name(category, channel),
                mandatory or (not state.global_mute and state.channel_setting(category, channel) is not False),
            )
            for channel in ALL_CHANNELS
        ]
        rows.append(GridRow(category, str(CATEGORY_LABELS.get(category, label)), mandatory, cells))
    return state, rows


def preferences_apply_grid(*, user: AbstractBaseUser, form: Mapping[str, Any]) -> PreferenceState:
    """Write the submitted grid: unticked boxes become opt-outs, ticked ones lose an opt-out. Also
    lifts a global mute (the page shows every box unticked while muted; submitting it is a choice).
    Decided on the stored document, not the cache (the patch must not undo a write it missed)."""
    row = PreferenceDocument.objects.filter(user=user).values_list("version", "document").first()
    state = PreferenceState(user_id=user.pk, version=row[0], document=row[1]) if row else PreferenceState(user.pk)
    patch: dict[str, Any] = {}
    for category in Category.values:
        if category in MANDATORY_CATEGORIES:
            continue
        for channel in ALL_CHANNELS:
            ticked = field_name(category, channel) in form
            current = state.channel_setting(category, channel)
            if not ticked and current is not False:
                patch.setdefault(category, {})[channel] = False
            elif ticked and current is False:
                patch.setdefault(category, {})[channel] = None  # merge patch: back to the default
    document: dict[str, Any] = {"categories": patch} if patch else {}
    if state.global_mute:
        document["global_mute"] = None
    if not document:
        return state
    return services.preferences_update(user=user, document=document, partial=True)
