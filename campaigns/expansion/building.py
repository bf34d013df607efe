"""A campaign batch and its recipients' messages: the batch message parsed, the campaign as the
expander sees it (cached), and the ready-to-send messages of one recipient."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.conf import settings

from campaigns.models import Campaign
from campaigns.rendering import CopyBook, StaticFieldCache, build_copy_context, build_fanout_context, render_copy
from notifications.channels import ALL_CHANNELS, Channel
from notifications.delivery_log import log_day as log_day_of
from notifications.dispatch.messages import ChannelMessage, channel_message, split_by_platform
from notifications.dispatch.screening import address_for
from notifications.dispatch.templating import RenderError
from notifications.models import MANDATORY_CATEGORIES, NotificationTemplate
from notifications.priority import PriorityClass, classify
from preferences.selectors import ContactPoints
from preferences.unsubscribe import unsubscribe_url

#: Every campaign message is bulk, whatever its type's category and urgency (a fanout event: its type's class).
CAMPAIGN_PRIORITY = classify(category="", urgency="", campaign=True)
#: How often a campaign's state is re-read (pause/cancel take effect within this).
STATE_REFRESH_SECONDS = 1.0


class InvalidBatch(Exception):
    """A batch message that cannot be expanded (malformed); it goes to the channel's DLQ."""


@dataclass(frozen=True)
class BatchMessage:
    campaign_id: int
    launch_id: str
    channel: str
    batch: int
    user_ids: list[int]
    copy_version: str = ""
    #: A quiet-hours batch scheduled by the expander itself: its id below the orchestrator's batch
    #: (e.g. "q1000@29412360": chunk starting at 1000, due at that epoch minute), so its cursor and
    #: completion are its own; nested when a recipient is deferred again.
    part: str = ""
    #: The recipients' frequency-cap tokens were taken when the batch was deferred: not again.
    caps_taken: bool = False
    #: The launch's day (ISO date): the day of its delivery-log rows, whenever a batch is expanded.
    log_day: str | None = None

    @property
    def ident(self) -> str | int:
        """The batch's id in cursors and completion sets: the orchestrator's number, or "<n>.<part>"."""
        return f"{self.batch}.{self.part}" if self.part else self.batch


def parse_batch(raw: bytes | None) -> BatchMessage:
    try:
        body = orjson.loads(raw or b"")
        if not isinstance(body, dict) or body.get("v") != 1 or body.get("type") != "campaign.batch":
            raise InvalidBatch("not a v1 campaign.batch message")
        channel = body["channel"]
        if channel not in ALL_CHANNELS:
            raise InvalidBatch(f"unknown channel {channel!r}")
        user_ids = body["user_ids"]
        if not isinstance(user_ids, list) or not all(isinstance(u, int) for u in user_ids):
            raise InvalidBatch("user_ids must be a list of integers")
        return BatchMessage(
            campaign_id=int(body["campaign_id"]),
            launch_id=str(body["launch_id"]),
            channel=channel,
            batch=int(body["batch"]),
            user_ids=user_ids,
            copy_version=str((body.get("content") or {}).get("copy_version") or ""),
            part=str(body.get("part") or ""),
            caps_taken=body.get("caps_taken") is True,
            log_day=body.get("log_day") or log_day_of(body.get("created_at")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidBatch(f"malformed batch message: {exc}") from exc


def deferred_batch_message(
    batch: BatchMessage, user_ids: list[int], *, start: int, due: dt.datetime, now: dt.datetime
) -> tuple[str, dict[str, Any]]:
    """The id and message of a quiet-hours batch: a chunk's recipients (from ``start``) whose windows
    end at ``due``, read back by :func:`parse_batch`. The id is deterministic (batch, chunk start, due
    minute), nested below the batch's own part when a recipient is deferred again."""
    part = f"q{start}@{int(due.timestamp()) // 60}"
    part = f"{batch.part}.{part}" if batch.part else part
    deferred = BatchMessage(
        campaign_id=batch.campaign_id,
        launch_id=batch.launch_id,
        channel=batch.channel,
        batch=batch.batch,
        user_ids=user_ids,
        copy_version=batch.copy_version,
        part=part,
        caps_taken=True,
    )
    payload = {
        "v": 1,
        "type": "campaign.batch",
        "campaign_id": batch.campaign_id,
        "launch_id": batch.launch_id,
        "channel": batch.channel,
        "batch": batch.batch,
        "part": part,
        "caps_taken": True,
        "user_ids": user_ids,
        "content": {"campaign_id": batch.campaign_id, "copy_version": batch.copy_version},
        "deferred_until": due.isoformat(),
        "created_at": now.isoformat(),
        "log_day": batch.log_day,
    }
    return str(deferred.ident), payload


def campaign_copies(campaign: Campaign) -> list[Any]:
    """What a campaign's messages are rendered from: its copy, or (a fanout) its type's templates,
    which have the same fields."""
    if campaign.is_fanout:
        return list(NotificationTemplate.objects.filter(notification_type_id=campaign.notification_type_id))
    return list(campaign.copies.all())


def content_version(campaign: Campaign) -> str:
    """The version of what the campaign renders (batches carry it; the expander reloads on a change)."""
    return copy_version(campaign_copies(campaign))


@dataclass
class CampaignView:
    id: int
    name: str
    state: str
    launch_id: str | None
    throttle: int | None
    channels: list[str]
    type_key: str
    category: str
    default_channels: list[str]
    copies: CopyBook
    copy_version: str
    loaded_at: float = 0.0
    #: A fanout event: its data (the template context) and the class its type's category and urgency give.
    fanout: bool = False
    event_data: dict[str, Any] = field(default_factory=dict)
    urgency: str = "bulk"
    priority: PriorityClass = PriorityClass.BULK

    @property
    def urgent(self) -> bool:
        """Urgent messages pass kill switches that hold or drop the rest (as in the dispatcher)."""
        return self.priority == PriorityClass.URGENT

    @classmethod
    def load(cls, campaign: Campaign) -> CampaignView:
        copies = campaign_copies(campaign)
        entry = campaign.notification_type
        fanout = campaign.is_fanout
        return cls(
            id=campaign.pk,
            name=campaign.name,
            state=campaign.state,
            launch_id=str(campaign.launch_id) if campaign.launch_id else None,
            throttle=campaign.throttle,
            channels=list(campaign.channels or []),
            type_key=entry.key,
            category=entry.category,
            default_channels=list(entry.default_channels or []),
            copies=CopyBook.from_copies(copies),
            copy_version=copy_version(copies),
            loaded_at=time.monotonic(),
            fanout=fanout,
            event_data=dict(campaign.event_data or {}) if fanout else {},
            urgency=entry.urgency if fanout else "bulk",
            priority=classify(category=entry.category, urgency=entry.urgency) if fanout else CAMPAIGN_PRIORITY,
        )


def copy_version(copies: Sequence[Any]) -> str:
    latest = max((c.updated_at for c in copies), default=None)
    return f"{len(copies)}:{latest.isoformat() if latest else ''}"


class CampaignCache:
    """Campaign views by id: copy loaded once per version, state re-read every STATE_REFRESH_SECONDS."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._views: dict[int, CampaignView] = {}

    def get(self, campaign_id: int, *, copy_version: str = "") -> CampaignView | None:
        view = self._views.get(campaign_id)
        now = self._clock()
        if view is None or (copy_version and copy_version != view.copy_version):
            campaign = Campaign.objects.select_related("notification_type").filter(pk=campaign_id).first()
            if campaign is None:
                self._views.pop(campaign_id, None)
                return None
            view = self._views[campaign_id] = CampaignView.load(campaign)
            view.loaded_at = now
            return view
        if now - view.loaded_at >= STATE_REFRESH_SECONDS:
            row = Campaign.objects.filter(pk=campaign_id).values("state", "launch_id", "throttle").first()
            if row is None:
                self._views.pop(campaign_id, None)
                return None
            view.state = row["state"]
            view.launch_id = str(row["launch_id"]) if row["launch_id"] else None
            view.throttle = row["throttle"]
            view.loaded_at = now
        return view


def build_recipient_messages(
    view: CampaignView,
    *,
    channel: str,
    launch_id: str,
    contact: ContactPoints,
    recipient: dict[str, Any],
    now,
    test: bool = False,
    statics: StaticFieldCache | None = None,
    log_day: str | None = None,
) -> list[ChannelMessage]:
    """The ready-to-send message(s) of one recipient on one channel ([] without a contact point).
    Raises RenderError when the copy does not render for this recipient."""
    to = address_for(channel, contact)
    if to is None:
        return []
    user_id = contact.user_id
    locale = contact.locale or settings.LANGUAGE_CODE
    copy = view.copies.copy_for(channel, locale)
    # Signing the one-click token is the costliest step of a message: only where it is used (the
    # e-mail header, or copy that mentions it).
    wanted = channel == Channel.EMAIL or (copy is not None and view.copies.mentions_unsubscribe(copy))
    mandatory = view.category in MANDATORY_CATEGORIES
    unsubscribe = unsubscribe_url(user_id, view.category) if wanted and not mandatory else None
    user = {"id": user_id, "email": contact.email, "first_name": recipient.get("first_name") or ""}
    if copy is None:
        if channel != Channel.WEBHOOK:
            raise RenderError(f"no {channel} copy for locale {locale!r}")
        content: dict[str, Any] = (
            {"payload": {"type": view.type_key, "event_id": launch_id, "data": view.event_data}}
            if view.fanout
            else {"payload": {"type": view.type_key, "campaign_id": view.id, "launch_id": launch_id}}
        )
    else:
        content = statics.static_render(copy, channel) if statics is not None else None
        if content is None:
            if view.fanout:
                context = build_fanout_context(
                    data=view.event_data,
                    event={"id": launch_id, "type": view.type_key},
                    user=user,
                    unsubscribe_url=unsubscribe,
                )
            else:
                context = build_copy_context(
                    user=user,
                    profile={"locale": locale, "attributes": recipient.get("attributes") or {}},
                    campaign={"id": view.id, "name": view.name},
                    unsubscribe_url=unsubscribe,
                )
            content = render_copy(copy, channel, context)
    if channel in (Channel.PUSH, Channel.INAPP):
        content["data"] = (
            {"type": view.type_key, "event_id": launch_id, **push_data(view.event_data)}
            if view.fanout
            else {"type": view.type_key, "campaign_id": str(view.id), "launch_id": launch_id}
        )
    if channel == Channel.EMAIL and unsubscribe:
        content["list_unsubscribe"] = unsubscribe
    meta: dict[str, Any] = {"campaign_id": view.id, "launch_id": None if test else launch_id, "throttle": None}
    if test:
        meta["test"] = True
    else:
        meta["throttle"] = view.throttle
    message = channel_message(
        event_id=launch_id,
        user_id=user_id,
        channel=channel,
        type=view.type_key,
        category=view.category,
        urgency="normal" if test else view.urgency,
        # A campaign is bulk whatever its type (a fanout event: its type's class); a marketer's test
        # send is a preview, sent at once.
        priority=PriorityClass.TRANSACTIONAL if test else view.priority,
        created_at=now.isoformat(),
        locale=locale,
        to=to,
        content=content,
        meta=meta,
        log_day=log_day,
    )
    return split_by_platform(message)


def push_data(data: dict[str, Any]) -> dict[str, str]:
    """Push data values must be strings (FCM): the event data's scalars, stringified (as the dispatcher)."""
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str | int | float | bool)}
