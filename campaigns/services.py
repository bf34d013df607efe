"""Write-side services of campaigns: the state machine (launch, pause, resume, cancel, complete, fail)
and "send a test to me".

Every state change is one conditional UPDATE (``WHERE state IN (…)``), so the admin and the
orchestrator can never overwrite each other's move (a campaign cancelled while the orchestrator
finishes a page stays cancelled). Each change also writes a ``campaign.<state>`` event to
``notif.campaigns`` through the outbox in the same transaction; the launch event is what starts the
orchestrator's work, the others are an audit trail for whoever consumes the topic.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from campaigns.halt import set_halt
from campaigns.models import TRANSITIONS, Campaign, CampaignState
from notifications.bus.topics import delivery_topic, topic_name
from notifications.channels import Channel
from notifications.dispatch.messages import Header
from notifications.outbox.services import OutboxMessage, enqueue_messages
from notifications.priority import lane_for
from notifications.redis_client import get_redis

LAUNCH_PERMISSION = "campaigns.launch_campaign"
#: A schedule this far in the past is refused rather than started at once (a typo, not a wish).
SCHEDULE_GRACE = dt.timedelta(minutes=1)


class CampaignError(Exception):
    """A campaign action that cannot be done now; the message is meant for the marketer."""


def _require(user, permission: str, action: str) -> None:
    if user is None or not user.has_perm(permission):
        raise PermissionDenied(f"You do not have permission to {action} campaigns.")


def _event(campaign: Campaign, event_type: str, *, now: dt.datetime, user=None, **extra: Any) -> OutboxMessage:
    payload = {
        "v": 1,
        "type": event_type,
        "campaign_id": campaign.pk,
        "launch_id": str(campaign.launch_id) if campaign.launch_id else None,
        "occurred_at": now.isoformat(),
        "by": getattr(user, "pk", None),
        **extra,
    }
    return OutboxMessage(
        topic=topic_name("campaigns"),
        key=str(campaign.pk),
        payload=payload,
        headers={Header.IDEMPOTENCY_KEY: f"{campaign.launch_id}:{event_type}", "event-type": event_type},
    )


def campaign_transition(
    *, campaign_id: int, to: str, expected: Iterable[str] | None = None, now: dt.datetime | None = None, **fields
) -> bool:
    """Move the campaign to ``to`` if it is in one of ``expected`` (default: any state that may move
    there). One conditional UPDATE; returns whether it moved."""
    now = now or timezone.now()
    sources = set(expected) if expected is not None else {s for s, targets in TRANSITIONS.items() if to in targets}
    sources = {s for s in sources if to in TRANSITIONS[s]}
    if to in (CampaignState.COMPLETED, CampaignState.CANCELLED, CampaignState.FAILED):
        fields.setdefault("finished_at", now)
    moved = Campaign.objects.filter(pk=campaign_id, state__in=sources).update(
        state=to, state_changed_at=now, updated_at=now, **fields
    )
    return bool(moved)


def launch_problems(campaign: Campaign, *, now: dt.datetime | None = None) -> list[str]:
    """Why the campaign cannot be launched now (empty when it can)."""
    now = now or timezone.now()
    problems: list[str] = []
    if campaign.state != CampaignState.DRAFT:
        problems.append(f"Only a draft can be launched; this campaign is {campaign.get_state_display().lower()}.")
    try:
        campaign.full_clean()
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            problems += [f"{field}: {m}" for m in messages]
    if not campaign.notification_type.enabled:
        problems.append(f"The notification type '{campaign.notification_type.key}' is disabled.")
    defaults = set(campaign.copies.filter(locale="").values_list("channel", flat=True))
    for channel in campaign.channels or []:
        if channel != Channel.WEBHOOK and channel not in defaults:
            problems.append(f"Write the default copy (empty locale) for {channel}.")
    if campaign.schedule_at is not None and campaign.schedule_at < now - SCHEDULE_GRACE:
        problems.append("The schedule is in the past; change it or clear it to start at once.")
    return problems


def campaign_launch(*, campaign_id: int, user, now: dt.datetime | None = None) -> Campaign:
    """Launch a draft: state → scheduled (the orchestrator starts it at its time, or at once), a new
    launch id, and the launch event in the outbox, all in one transaction."""
    _require(user, LAUNCH_PERMISSION, "launch")
    now = now or timezone.now()
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().select_related("notification_type").get(pk=campaign_id)
        problems = launch_problems(campaign, now=now)
        if problems:
            raise CampaignError(" ".join(problems))
        launch_id = uuid.uuid4()
        scheduled_for = campaign.schedule_at if campaign.schedule_at and campaign.schedule_at > now else now
        campaign.launch_id = launch_id
        moved = campaign_transition(
            campaign_id=campaign.pk,
            to=CampaignState.SCHEDULED,
            expected=[CampaignState.DRAFT],
            now=now,
            launch_id=launch_id,
            launched_at=now,
            launched_by=user,
        )
        if not moved:  # pragma: no cover - the row is locked, so only a bug gets here
            raise CampaignError("The campaign changed meanwhile; reload and try again.")
        enqueue_messages(
            [_event(campaign, "campaign.launched", now=now, user=user, scheduled_for=scheduled_for.isoformat())]
        )
    campaign.refresh_from_db()
    return campaign


def _change(campaign_id: int, *, user, to: str, expected: Iterable[str], event: str, verb: str) -> Campaign:
    _require(user, LAUNCH_PERMISSION, verb)
    now = timezone.now()
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
        if not campaign_transition(campaign_id=campaign_id, to=to, expected=expected, now=now):
            raise CampaignError(f"Cannot {verb} a campaign that is {campaign.get_state_display().lower()}.")
        enqueue_messages([_event(campaign, event, now=now, user=user)])
        halt = {CampaignState.CANCELLED: "cancelled", CampaignState.PAUSED: "paused"}.get(to)
        transaction.on_commit(lambda: set_halt(get_redis(), campaign_id, halt))
    campaign.refresh_from_db()
    return campaign


def campaign_pause(*, campaign_id: int, user) -> Campaign:
    """Running → paused: the orchestrator stops paging, the expanders stop releasing messages."""
    return _change(
        campaign_id,
        user=user,
        to=CampaignState.PAUSED,
        expected=[CampaignState.RUNNING],
        event="campaign.paused",
        verb="pause",
    )


def campaign_resume(*, campaign_id: int, user) -> Campaign:
    """Paused → running: everything continues from its checkpoint."""
    return _change(
        campaign_id,
        user=user,
        to=CampaignState.RUNNING,
        expected=[CampaignState.PAUSED],
        event="campaign.resumed",
        verb="resume",
    )


def campaign_cancel(*, campaign_id: int, user) -> Campaign:
    """Stop for good: no further batch is emitted or expanded."""
    return _change(
        campaign_id,
        user=user,
        to=CampaignState.CANCELLED,
        expected=[CampaignState.DRAFT, CampaignState.SCHEDULED, CampaignState.RUNNING, CampaignState.PAUSED],
        event="campaign.cancelled",
        verb="cancel",
    )


def campaign_complete(*, campaign_id: int) -> bool:
    """Running → completed (the orchestrator: every batch emitted and expanded)."""
    with transaction.atomic():
        campaign = Campaign.objects.get(pk=campaign_id)
        moved = campaign_transition(
            campaign_id=campaign_id, to=CampaignState.COMPLETED, expected=[CampaignState.RUNNING]
        )
        if moved:
            enqueue_messages([_event(campaign, "campaign.completed", now=timezone.now())])
    return moved


def campaign_fail(*, campaign_id: int, reason: str) -> bool:
    with transaction.atomic():
        campaign = Campaign.objects.get(pk=campaign_id)
        moved = campaign_transition(campaign_id=campaign_id, to=CampaignState.FAILED, failure_reason=reason[:500])
        if moved:
            enqueue_messages([_event(campaign, "campaign.failed", now=timezone.now(), reason=reason[:500])])
    return moved


def campaign_send_test(*, campaign_id: int, user, recipient_id: str | None = None) -> list[str]:
    """Render the campaign for ``user`` — or for the recipient whose external id is ``recipient_id`` —
    and send it on each channel they can be reached on, through the outbox and the normal workers
    (preferences are not applied: a test was asked for). Returns the channels a message was queued for."""
    from campaigns.expansion.building import CampaignView, build_recipient_messages
    from preferences.recipients import recipient_user
    from preferences.selectors import contact_points_for_users

    if user is None or not user.has_perm("campaigns.change_campaign"):
        raise PermissionDenied("You do not have permission to send campaign tests.")
    if recipient_id:
        user = recipient_user(recipient_id.strip())
        if user is None:
            raise CampaignError(f"No recipient has the id {recipient_id.strip()!r}.")
    campaign = Campaign.objects.select_related("notification_type").get(pk=campaign_id)
    view = CampaignView.load(campaign)
    contact = contact_points_for_users([user.pk]).get(user.pk)
    if contact is None:
        raise CampaignError(
            "The recipient has no contact points." if recipient_id else "Your user has no contact points."
        )
    test_id = str(uuid.uuid4())
    messages: list[OutboxMessage] = []
    channels: list[str] = []
    now = timezone.now()
    for channel in campaign.channels or []:
        built = build_recipient_messages(
            view,
            channel=channel,
            launch_id=test_id,
            contact=contact,
            recipient={"first_name": getattr(user, "first_name", ""), "attributes": {}},
            now=now,
            test=True,
        )
        if not built:
            continue
        channels.append(channel)
        messages += [
            OutboxMessage(
                topic=delivery_topic(channel, lane_for(m["priority"])),
                key=str(user.pk),
                payload=dict(m),
                headers={Header.IDEMPOTENCY_KEY: m["id"]},
            )
            for m in built
        ]
    if not messages:
        raise CampaignError("You cannot be reached on any of the campaign's channels (no e-mail, phone or device).")
    with transaction.atomic():
        enqueue_messages(messages)
    return channels
