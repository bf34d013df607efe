"""One chunk of a campaign batch expanded: recipients screened, capped, deferred to the end of their quiet
hours or rendered into per-recipient messages, and the outcomes logged. See docs/architecture.md,
"Campaigns" (Batch expansion)."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from django.db import transaction
from prometheus_client import Counter

from campaigns.expansion.building import BatchMessage, CampaignView, build_recipient_messages
from campaigns.expansion.deferral import due_minute, schedule_deferred_batches, settle_scheduled_logs
from campaigns.rendering import StaticFieldCache
from campaigns.selectors import BatchRecipient
from notifications.bus.topics import delivery_topic
from notifications.delivery_log import LogEntry, record_dispatch_outcomes
from notifications.dispatch import screening
from notifications.dispatch.messages import Header, encode
from notifications.dispatch.templating import RenderError
from notifications.models import DeliveryStatus, Urgency
from notifications.priority import lane_for
from preferences.cache import preferences_get_many
from preferences.state import PreferenceState

log = logging.getLogger(__name__)

RELEASED = Counter("campaign_expander_messages_total", "Per-recipient messages produced", ["channel"])
SUPPRESSED = Counter("campaign_expander_suppressed_total", "Recipients dropped at expansion", ["channel", "reason"])
DEFERRED = Counter(
    "campaign_expander_deferred_total", "Recipients deferred to the end of their quiet hours", ["channel"]
)


@dataclass(slots=True)
class Candidate(screening.Screened):
    recipient: BatchRecipient


@dataclass
class Chunk:
    """What expanding one chunk did (the counters move with the cursor)."""

    queued: int = 0
    suppressed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    deferred_batches: list[str] = field(default_factory=list)
    deferred_users: int = 0


def expand_chunk(
    view: CampaignView,
    batch: BatchMessage,
    ids: list[int],
    *,
    start: int,
    loaded: dict[int, BatchRecipient],
    redis_client: redis.Redis,
    now: dt.datetime,
    statics: StaticFieldCache,
    produce: Callable[[str, str, bytes, dict[str, str]], None],
) -> Chunk:
    """Produce the chunk's messages (not yet flushed), schedule its quiet-hours recipients and log
    its suppressions. Batched like the dispatcher: preference states in one MGET, frequency caps
    in one pipeline, deferred recipients in one insert per due time, log rows in one statement."""
    channel = batch.channel
    states = preferences_get_many(ids, redis_client=redis_client)
    topic = delivery_topic(channel, lane_for(view.priority))
    chunk = Chunk()
    suppressed: dict[int, str] = {}
    candidates: list[Candidate] = []
    for user_id in ids:
        recipient = loaded.get(user_id)
        state = states.get(user_id) or PreferenceState(user_id=user_id)
        to, reason = screening.screen_channel(
            state,
            recipient.contact if recipient is not None else None,
            category=view.category,
            channel=channel,
            default_channels=view.default_channels,
            mode=None,  # the kill switch holds or drops the whole batch (_expand)
            urgent=view.urgent,
        )
        if to is None:
            suppressed[user_id] = reason
            continue
        candidates.append(Candidate(user_id, channel, view.category, state, to, recipient))
    # A quiet-hours batch had its recipients' caps taken when it was deferred.
    refused = set() if batch.caps_taken else screening.frequency_cap_refusals(redis_client, candidates, now=now)
    quiet_hours = screening.QuietHours(now)
    waiting: dict[dt.datetime, list[int]] = {}
    for index, candidate in enumerate(candidates):
        user_id, recipient = candidate.user_id, candidate.recipient
        if index in refused:
            suppressed[user_id] = screening.FREQUENCY_CAP
            continue
        quiet_end = quiet_hours.end(candidate.state, urgent=view.urgency == Urgency.URGENT)
        if quiet_end is not None:
            waiting.setdefault(due_minute(quiet_end), []).append(user_id)
            continue
        try:
            parts = build_recipient_messages(
                view,
                channel=channel,
                launch_id=batch.launch_id,
                contact=recipient.contact,
                recipient={"first_name": recipient.first_name, "attributes": recipient.attributes},
                now=now,
                statics=statics,
                log_day=batch.log_day,
            )
        except RenderError as exc:
            # Copy was validated with a sample recipient; a failure here is this recipient's data.
            suppressed[user_id] = "render_error"
            log.warning("campaign copy did not render", extra={"user_id": user_id, "error": str(exc)})
            continue
        if not parts:
            suppressed[user_id] = screening.NO_CONTACT_POINT
            continue
        for part in parts:
            produce(topic, str(user_id), encode(part), {Header.IDEMPOTENCY_KEY: part["id"]})
            chunk.queued += 1
    chunk.suppressed = len(suppressed)
    chunk.reasons = dict(Tally(suppressed.values()))
    for reason, n in chunk.reasons.items():
        SUPPRESSED.labels(channel, reason).inc(n)
    scheduled: list[tuple[str, list[int]]] = []
    if suppressed or waiting:
        with transaction.atomic():  # the deferred batches and their log rows together
            scheduled = schedule_deferred_batches(batch, waiting, start=start, now=now)
            log_outcomes(view, batch, suppressed, [u for _ident, users in scheduled for u in users])
    chunk.deferred_batches = [ident for ident, _users in scheduled]
    chunk.deferred_users = sum(len(users) for _ident, users in scheduled)
    if chunk.deferred_users:
        DEFERRED.labels(channel).inc(chunk.deferred_users)
    RELEASED.labels(channel).inc(chunk.queued)
    return chunk


def log_outcomes(view: CampaignView, batch: BatchMessage, suppressed: dict[int, str], scheduled: list[int]) -> None:
    """Delivery-log rows of the chunk's suppressions and quiet-hours deferrals (one statement;
    the first decision wins). A recipient released from a quiet-hours batch already has a
    ``scheduled`` row: if suppressed now (cap, opt-out meanwhile, cancel), that row is settled
    (one more statement); if sent, the worker moves it on as for any campaign message."""
    day = batch.log_day
    entries = [
        LogEntry(batch.launch_id, user_id, batch.channel, view.type_key, DeliveryStatus.SUPPRESSED, reason, day=day)
        for user_id, reason in suppressed.items()
    ] + [
        LogEntry(
            batch.launch_id, user_id, batch.channel, view.type_key, DeliveryStatus.SCHEDULED, "quiet_hours", day=day
        )
        for user_id in scheduled
    ]
    record_dispatch_outcomes(entries)
    if batch.part and suppressed:
        settle_scheduled_logs(batch.launch_id, batch.channel, suppressed)
