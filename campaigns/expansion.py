"""Batch expansion: one ``notif.<channel>.batch`` message in, per-recipient channel messages out.

The orchestrator emits batches of user ids (10k-50k). The expander turns each into ready-to-send
messages on ``notif.<channel>`` — rendered from the campaign's copy in the recipient's locale,
``priority: "bulk"``, ``urgency: "bulk"``, id ``<launch>:<user>:<channel>`` (push: ``:<platform>``
appended, as the dispatcher's ``split_by_platform`` does), ``event_id`` = launch id, ``meta`` =
``{"campaign_id", "launch_id", "throttle"}`` — so the channel workers deliver them through the same
dedup → token bucket → send → retry/DLQ pipeline as transactional messages.

**Backpressure and throttle.** A batch is not dumped into the channel topic at once: messages are
released in chunks while the queue in front of the channel's workers (their consumer group's lag
on ``notif.<channel>``, :class:`ChannelBacklog`) is below a bound sized to keep every worker busy
(2 x WORKER_BATCH_SIZE x workers, at least CAMPAIGN_EXPANSION_LEAD_SECONDS of the contract rate),
and, for a throttled campaign, as tokens of its global bucket allow
(``campaign-pace:campaign:<id>``). So ``notif.<channel>`` never holds more than a few seconds of
campaign traffic: a transactional message produced meanwhile waits behind seconds of it, not
behind a million bulk messages (measured in ``test_transactional_messages_are_not_held_behind_a_
running_campaign``); pause and cancel take effect within that; the workers always have work. A
batch that must wait is handed back to the runner as a *deferral* (its partition pauses until
due), so the consumer never sleeps past ``max.poll.interval.ms``.

**Progress and idempotency.** Each chunk is produced and acknowledged, then the batch's cursor and
the counters move in one Redis MULTI (:func:`campaigns.progress.record_expansion`). A crash between
the two re-expands that chunk: harmless, the worker's dedup key is launch + user + channel.

**Per batch** the recipients' contact points, names and attributes are loaded once (two queries
whatever the batch size, :func:`campaigns.selectors.batch_recipients`) and kept while the batch is
worked through; preferences are re-checked per chunk from the preference cache (one MGET), so
someone who unsubscribed after the batch was emitted (a long, throttled campaign) is not sent to.

**Frequency caps and quiet hours**, decided as the dispatcher decides them and with its functions:
per chunk one :func:`preferences.frequency.frequency_cap_take_many` pipeline (capped recipients are
suppressed, reason ``frequency_cap``, in the progress hash and the delivery log), then
:func:`preferences.rules.quiet_hours_end`. Recipients inside their quiet hours are deferred as a
*batch*: one ``campaign.batch`` message per chunk and window end (rounded up to the minute) with a
``part`` id and ``caps_taken``, held as a ``ScheduledMessage`` on ``notif.<channel>.batch``
(:func:`notifications.dispatch.scheduling.schedule_messages`). The dispatcher's tick releases it
through the outbox when due, and it is expanded like any batch — campaign state (paused: held;
cancelled: dropped and its recipients logged suppressed), kill switch, backpressure, throttle,
preferences and quiet hours re-read, caps not taken again — into the same message ids, so each
recipient still gets at most one message per launch and channel. The orchestrator completes a
campaign only once its deferred batches are expanded (:func:`campaigns.progress.pending_deferred_count`).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from prometheus_client import Counter

from campaigns.models import Campaign, CampaignState
from campaigns.progress import read_cursor, record_expansion
from campaigns.rendering import CopyBook, StaticFieldCache, build_copy_context, render_copy
from campaigns.selectors import BatchRecipient, batch_recipients
from campaigns.throttle import throttle_burst, token_bucket_for
from notifications.bus.config import admin_config, consumer_config
from notifications.bus.lanes import lane_group
from notifications.bus.producing import AckedProducer
from notifications.bus.runner import ConsumerRunner, Deferrals, RunnerConfig
from notifications.bus.topics import channel_topic, delivery_topic
from notifications.channels import ALL_CHANNELS, Channel
from notifications.delivery.token_bucket import Priority, RateLimiterUnavailable
from notifications.delivery_log import LogEntry, record_dispatch_outcomes
from notifications.dispatch.dispatcher import address_for, split_by_platform
from notifications.dispatch.killswitch import KillSwitchBoard
from notifications.dispatch.messages import ChannelMessage, Header, encode
from notifications.dispatch.scheduling import Deferred, schedule_messages
from notifications.dispatch.templating import RenderError
from notifications.models import MANDATORY_CATEGORIES, DeliveryLog, DeliveryStatus, KillSwitchMode, Provider
from notifications.priority import PriorityClass, classify, lane_for
from notifications.providers.capacity import channel_capacity
from notifications.redis_connect import REDIS_ERRORS
from preferences.cache import preferences_get_many
from preferences.frequency import ALLOWED as ALLOWED_CAP
from preferences.frequency import CapRequest, frequency_cap_take_many
from preferences.rules import is_allowed, quiet_hours_end
from preferences.selectors import ContactPoints
from preferences.state import PreferenceState
from preferences.unsubscribe import unsubscribe_url

log = logging.getLogger(__name__)

BATCHES = Counter("campaign_expander_batches_total", "Batch messages handled", ["channel", "outcome"])
RELEASED = Counter("campaign_expander_messages_total", "Per-recipient messages produced", ["channel"])
BACKPRESSURE = Counter(
    "campaign_expander_backpressure_total", "Times a batch waited because notif.<channel> was backed up", ["channel"]
)
SUPPRESSED = Counter("campaign_expander_suppressed_total", "Recipients dropped at expansion", ["channel", "reason"])
DEFERRED = Counter(
    "campaign_expander_deferred_total", "Recipients deferred to the end of their quiet hours", ["channel"]
)

#: How often the expander re-reads a campaign's state (pause/cancel take effect within this).
STATE_REFRESH_SECONDS = 1.0
#: How often the channels' contract rates are re-read from the Provider table.
CONTRACT_REFRESH_SECONDS = 5.0
#: How often the channel topic's backlog (the workers' consumer lag) is measured.
BACKLOG_REFRESH_SECONDS = 0.25
#: A wait for throttle tokens up to this long is slept in place; a longer one becomes a deferral.
MAX_INLINE_WAIT = 0.25
#: Re-check a paused campaign (or a paused/delayed channel) this often.
PAUSED_RECHECK_SECONDS = 1.0
KILL_SWITCH_RECHECK_SECONDS = 5.0
#: Batches whose recipients stay loaded in memory: a batch is worked through over several polls,
#: interleaved with the other partitions' batches (a 50k batch holds roughly 15-25 MB).
LOADED_BATCHES = 8


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
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidBatch(f"malformed batch message: {exc}") from exc


# -- the campaign as the expander sees it ----------------------------------------------------------------
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

    @classmethod
    def load(cls, campaign: Campaign) -> CampaignView:
        copies = list(campaign.copies.all())
        entry = campaign.notification_type
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


# -- building per-recipient messages ---------------------------------------------------------------------
#: Every campaign message is bulk, whatever its type's category and urgency.
CAMPAIGN_PRIORITY = classify(category="", urgency="", campaign=True)


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
    if copy is None:
        if channel != Channel.WEBHOOK:
            raise RenderError(f"no {channel} copy for locale {locale!r}")
        content: dict[str, Any] = {"payload": {"type": view.type_key, "campaign_id": view.id, "launch_id": launch_id}}
    else:
        content = statics.static_render(copy, channel) if statics is not None else None
        if content is None:
            context = build_copy_context(
                user={"id": user_id, "email": contact.email, "first_name": recipient.get("first_name") or ""},
                profile={"locale": locale, "attributes": recipient.get("attributes") or {}},
                campaign={"id": view.id, "name": view.name},
                unsubscribe_url=unsubscribe,
            )
            content = render_copy(copy, channel, context)
    if channel in (Channel.PUSH, Channel.INAPP):
        content["data"] = {"type": view.type_key, "campaign_id": str(view.id), "launch_id": launch_id}
    if channel == Channel.EMAIL and unsubscribe:
        content["list_unsubscribe"] = unsubscribe
    meta: dict[str, Any] = {"campaign_id": view.id, "launch_id": None if test else launch_id, "throttle": None}
    if test:
        meta["test"] = True
    else:
        meta["throttle"] = view.throttle
    message: ChannelMessage = {
        "v": 1,
        "id": f"{launch_id}:{user_id}:{channel}",
        "event_id": launch_id,
        "user_id": user_id,
        "channel": channel,
        "type": view.type_key,
        "category": view.category,
        "urgency": "normal" if test else "bulk",
        # A campaign is bulk whatever its type; a marketer's test send is a preview, sent at once.
        "priority": PriorityClass.TRANSACTIONAL if test else CAMPAIGN_PRIORITY,
        "created_at": now.isoformat(),
        "locale": locale,
        "to": to,
        "content": content,
        "meta": meta,
    }
    return split_by_platform(message)


# -- pacing ----------------------------------------------------------------------------------------------
class ChannelContracts:
    """Each channel's send capacity from the Provider table: push = first enabled FCM + first enabled
    APNs provider (they send in parallel); other channels = the first enabled provider (the others
    are failovers). None when the channel has no enabled provider."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rates: dict[str, float | None] = {}
        self._loaded_at = float("-inf")

    def rate(self, channel: str) -> float | None:
        if self._clock() - self._loaded_at >= CONTRACT_REFRESH_SECONDS:
            self._load()
        return self._rates.get(channel)

    def _load(self) -> None:
        self._loaded_at = self._clock()
        by_channel: dict[str, list[tuple[str, float]]] = {}
        for row in Provider.objects.filter(enabled=True).order_by("priority", "name"):
            by_channel.setdefault(row.channel, []).append((row.kind, row.rate))
        self._rates = {channel: channel_capacity(channel, rows) for channel, rows in by_channel.items()}


class ChannelBacklog:
    """The queue in front of a channel's workers, read from Kafka with the admin API: messages in
    ``notif.<channel>`` past the workers' committed offsets (a group that never committed counts
    the whole topic), and how many workers the group has. Measured at most every ``interval``
    seconds; what this process released since is added on top, so chunks in a row cannot all
    fill the same room."""

    def __init__(self, *, interval: float = BACKLOG_REFRESH_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._admin: AdminClient | None = None
        self._measured: dict[str, tuple[float, int, int]] = {}
        self._released: dict[str, int] = {}

    def waiting(self, channel: str) -> int:
        return self._current(channel)[0]

    def workers(self, channel: str) -> int:
        return self._current(channel)[1]

    def released(self, channel: str, n: int) -> None:
        self._released[channel] = self._released.get(channel, 0) + n

    def _current(self, channel: str) -> tuple[int, int]:
        at, lag, members = self._measured.get(channel, (float("-inf"), 0, 0))
        if self._clock() - at >= self.interval:
            lag, members = self._measure(channel)
            self._measured[channel] = (self._clock(), lag, members)
            self._released[channel] = 0
        return lag + self._released.get(channel, 0), members

    def _measure(self, channel: str) -> tuple[int, int]:
        if self._admin is None:
            self._admin = AdminClient(admin_config())
        lane = lane_for(CAMPAIGN_PRIORITY)
        admin, topic = self._admin, delivery_topic(channel, lane)
        group = consumer_config(lane_group(worker_group(channel), lane))["group.id"]
        partitions = admin.list_topics(topic, timeout=5).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        described = admin.describe_consumer_groups([group], request_timeout=5)[group]
        committed_future = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, tps)], request_timeout=5
        )[group]
        ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=5)
        starts = admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps}, request_timeout=5)
        committed = {tp.partition: tp.offset for tp in committed_future.result(5).topic_partitions}
        waiting = 0
        for tp in tps:
            low, high = starts[tp].result(5).offset, ends[tp].result(5).offset
            start = committed.get(tp.partition, -1)
            waiting += max(0, high - max(start if start >= 0 else low, low))
        return waiting, len(described.result(5).members)


def worker_group(channel: str) -> str:
    """The channel workers' consumer group (``notifications.delivery.setup.build_worker_runner``)."""
    return str(getattr(settings, "CAMPAIGN_WORKER_GROUP", "worker.{channel}")).format(channel=channel)


@dataclass
class _Bucket:
    name: str
    rate: float
    burst: int


class Pacer:
    """Release permits from global token buckets (today: the campaign throttle's); tokens granted
    beyond what a chunk used (recipients suppressed in it) are kept as local credit for the next."""

    def __init__(self, client: redis.Redis) -> None:
        self.tokens = token_bucket_for(client)
        self.credit: dict[str, float] = {}

    def permits(self, buckets: list[_Bucket], want: int) -> tuple[int, float]:
        """How many messages may be released now (≤ want) and, when none, how long to wait."""
        if not buckets:
            return want, 0.0
        wait = 0.0
        for bucket in buckets:
            have = self.credit.get(bucket.name, 0.0)
            if have < want:
                ask = max(1, min(math.ceil(want - have), bucket.burst))
                granted, bucket_wait = self.tokens.take_many(
                    bucket.name, bucket.rate, bucket.burst, ask, priority=Priority.TRANSACTIONAL
                )
                self.credit[bucket.name] = have + granted
                if have + granted < 1:
                    wait = max(wait, bucket_wait)
        permits = min(int(self.credit.get(b.name, 0.0)) for b in buckets)
        return max(0, min(want, permits)), (wait if permits < 1 else 0.0)

    def spend(self, buckets: list[_Bucket], used: int) -> None:
        for bucket in buckets:
            self.credit[bucket.name] = self.credit.get(bucket.name, 0.0) - used


# -- quiet hours and frequency caps ----------------------------------------------------------------------
@dataclass
class _Chunk:
    """What expanding one chunk did (the counters move with the cursor)."""

    queued: int = 0
    suppressed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    deferred_batches: list[str] = field(default_factory=list)
    deferred_users: int = 0


def _active(view: CampaignView, batch: BatchMessage) -> bool:
    """Whether the batch may be expanded now. A quiet-hours batch of a campaign that completed anyway
    (its pending entry lost with Redis) is still delivered: those recipients were due a message."""
    return view.state == CampaignState.RUNNING or (bool(batch.part) and view.state == CampaignState.COMPLETED)


def _due_minute(moment: dt.datetime) -> dt.datetime:
    """Quiet hours' end rounded up to the minute: recipients whose windows end within the same minute
    share one deferred batch, and none is released before its window ends."""
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + dt.timedelta(minutes=1)


def settle_scheduled_logs(launch_id: str, channel: str, suppressed: dict[int, str]) -> int:
    """Turn the ``scheduled`` (quiet hours) delivery-log rows of these recipients into ``suppressed``
    with their reason: one statement. Rows already moved on are left alone."""
    if not suppressed:
        return 0
    table = DeliveryLog._meta.db_table
    rows = [{"user_id": user_id, "reason": reason[:200]} for user_id, reason in suppressed.items()]
    sql = f"""
        UPDATE {table} AS t SET status = %(suppressed)s, reason = v.reason, updated_at = %(now)s
        FROM jsonb_to_recordset(%(rows)s::jsonb) AS v(user_id bigint, reason text)
        WHERE t.event_id = %(event)s AND t.channel = %(channel)s AND t.user_id = v.user_id
          AND t.status = %(scheduled)s
    """  # noqa: S608 - only the table name is interpolated; values are parameters
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {
                "rows": orjson.dumps(rows).decode(),
                "now": timezone.now(),
                "event": launch_id,
                "channel": channel,
                "suppressed": DeliveryStatus.SUPPRESSED,
                "scheduled": DeliveryStatus.SCHEDULED,
            },
        )
        return cursor.rowcount


# -- the handler -----------------------------------------------------------------------------------------
@dataclass
class ExpanderConfig:
    chunk_size: int = 1000
    #: Work on one poll's batches for about this long, then hand back to the runner (poll, stop flag).
    time_budget: float = 1.0
    #: Throttle and backpressure on; off only for unit tests of the expansion itself.
    pacing: bool = True
    #: At most this many messages may wait in notif.<channel> before more are released
    #: (None: max(2 x WORKER_BATCH_SIZE, lead_seconds x the channel's contract rate)).
    max_backlog: int | None = None
    lead_seconds: float = 1.0

    @classmethod
    def from_settings(cls) -> ExpanderConfig:
        return cls(
            chunk_size=int(getattr(settings, "CAMPAIGN_EXPANSION_CHUNK", 1000)),
            time_budget=float(getattr(settings, "CAMPAIGN_EXPANSION_TIME_BUDGET", 1.0)),
            pacing=bool(getattr(settings, "CAMPAIGN_EXPANSION_PACING", True)),
            max_backlog=getattr(settings, "CAMPAIGN_EXPANSION_MAX_BACKLOG", None),
            lead_seconds=float(getattr(settings, "CAMPAIGN_EXPANSION_LEAD_SECONDS", 1.0)),
        )


class BatchExpander:
    """BatchHandler for ``notif.<channel>.batch`` topics (see the module docstring)."""

    def __init__(
        self,
        *,
        producer: Producer,
        redis_client: redis.Redis,
        config: ExpanderConfig | None = None,
        campaigns: CampaignCache | None = None,
        contracts: ChannelContracts | None = None,
        backlog: ChannelBacklog | None = None,
        switches: KillSwitchBoard | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], dt.datetime] = timezone.now,
    ) -> None:
        self.producer = producer
        self.redis = redis_client
        self.config = config or ExpanderConfig.from_settings()
        self.campaigns = campaigns or CampaignCache()
        self.contracts = contracts or ChannelContracts()
        self.backlog = backlog or ChannelBacklog()
        self.switches = switches or KillSwitchBoard()
        self.pacer = Pacer(redis_client)
        self.statics = StaticFieldCache()
        self.clock = clock
        self.sleep = sleep
        #: The time quiet hours and frequency-cap windows are judged by (and messages stamped with).
        self.wall_clock = wall_clock
        self._loaded: OrderedDict[tuple[str, str, int | str], dict[int, BatchRecipient]] = OrderedDict()
        self._parsed: OrderedDict[tuple[str, int, int], BatchMessage] = OrderedDict()
        self._acked = AckedProducer(producer, "expander")

    # -- batch ---------------------------------------------------------------------------------------
    def handle_batch(self, messages: list[Message]) -> Deferrals:
        close_old_connections()
        deferrals: Deferrals = {}
        deadline = self.clock() + self.config.time_budget
        for message in messages:
            tp = (message.topic(), message.partition())
            if tp in deferrals:
                continue  # keep order within a partition: what follows a held-back batch waits too
            if self.clock() >= deadline:
                deferrals[tp] = (message.offset(), self.clock())  # come back at once, after a poll
                continue
            try:
                batch = self._parse(message)
            except InvalidBatch as exc:
                self._dead_letter(message, str(exc))
                continue
            try:
                due = self._expand(batch, deadline)
            except (*REDIS_ERRORS, RateLimiterUnavailable, KafkaException):
                # Cursors and the throttle live in Redis, the backlog in Kafka: without them, wait
                # (never release unpaced).
                log.warning("batch expansion waits for Redis/Kafka", exc_info=True)
                due = self.clock() + KILL_SWITCH_RECHECK_SECONDS
            if due is not None:
                deferrals[tp] = (message.offset(), due)
        self._flush()
        return deferrals

    def _parse(self, message: Message) -> BatchMessage:
        """Parse (and validate) a batch message once: a deferred batch is read again every poll."""
        key = (message.topic(), message.partition(), message.offset())
        batch = self._parsed.get(key)
        if batch is None:
            batch = self._parsed[key] = parse_batch(message.value())
            while len(self._parsed) > 2 * LOADED_BATCHES:
                self._parsed.popitem(last=False)
        return batch

    def _expand(self, batch: BatchMessage, deadline: float) -> float | None:
        """Work on one batch; None when it needs nothing more, else when to come back (monotonic)."""
        view = self.campaigns.get(batch.campaign_id, copy_version=batch.copy_version)
        if view is None or view.launch_id != batch.launch_id:
            BATCHES.labels(batch.channel, "stale").inc()
            log.info("batch of an unknown or superseded launch dropped", extra={"launch_id": batch.launch_id})
            return None
        key = dict(campaign_id=batch.campaign_id, launch_id=batch.launch_id, channel=batch.channel, batch=batch.ident)
        deferred = bool(batch.part)
        if view.state in (CampaignState.CANCELLED, CampaignState.FAILED) or (
            view.state == CampaignState.COMPLETED and not deferred
        ):
            BATCHES.labels(batch.channel, view.state).inc()
            if deferred:
                self._drop_deferred(view, batch, key, reason=f"campaign_{view.state}")
            return None
        if not _active(view, batch):  # paused (or the start is not committed yet)
            return self.clock() + PAUSED_RECHECK_SECONDS
        mode = self.switches.channel_mode(batch.channel)
        if mode in (KillSwitchMode.PAUSE, KillSwitchMode.DELAY):
            return self.clock() + KILL_SWITCH_RECHECK_SECONDS
        cursor = read_cursor(self.redis, **key)
        total = len(batch.user_ids)
        if mode == KillSwitchMode.DROP_NON_URGENT:
            if deferred:
                self._drop_deferred(view, batch, key, reason="kill_switch", cursor=cursor)
                return None
            SUPPRESSED.labels(batch.channel, "kill_switch").inc(max(0, total - cursor))
            record_expansion(
                self.redis,
                **key,
                cursor=total,
                queued=0,
                suppressed=max(0, total - cursor),
                extra=0,
                done=True,
                reasons={"kill_switch": max(0, total - cursor)},
            )
            return None
        buckets = self._buckets(view, batch.channel)
        while cursor < total:
            if self.clock() >= deadline:
                return self.clock()
            view = self.campaigns.get(batch.campaign_id) or view
            if not _active(view, batch):
                return None if view.state != CampaignState.PAUSED else self.clock() + PAUSED_RECHECK_SECONDS
            want = min(self.config.chunk_size, total - cursor)
            if self.config.pacing:
                try:
                    room = self._max_backlog(batch.channel) - self.backlog.waiting(batch.channel)
                except KafkaException as exc:  # e.g. a leader moving: look again shortly, release nothing blind
                    log.warning("channel backlog unknown", extra={"channel": batch.channel, "error": str(exc)})
                    return self.clock() + BACKLOG_REFRESH_SECONDS * 2
                if room < 1:
                    BACKPRESSURE.labels(batch.channel).inc()
                    return self.clock() + BACKLOG_REFRESH_SECONDS
                want = min(want, room)
            permits, wait = self.pacer.permits(buckets, want)
            if permits < 1:
                if wait <= MAX_INLINE_WAIT and self.clock() + wait < deadline:
                    self.sleep(max(wait, 0.001))
                    continue
                return self.clock() + wait
            ids = batch.user_ids[cursor : cursor + permits]
            chunk = self._expand_chunk(view, batch, ids, start=cursor)
            self.pacer.spend(buckets, chunk.queued)
            self.backlog.released(batch.channel, chunk.queued)
            self._flush()  # acknowledged by Kafka before the cursor moves
            cursor += len(ids)
            record_expansion(
                self.redis,
                **key,
                cursor=cursor,
                queued=chunk.queued,
                suppressed=chunk.suppressed,
                extra=max(0, chunk.queued - (len(ids) - chunk.suppressed - chunk.deferred_users)),
                done=cursor >= total,
                reasons=chunk.reasons,
                deferred_batches=chunk.deferred_batches,
                deferred_users=chunk.deferred_users,
                undeferred_users=len(ids) if deferred else 0,
                deferred_batch=deferred,
            )
        if total == 0:
            record_expansion(
                self.redis, **key, cursor=0, queued=0, suppressed=0, extra=0, done=True, deferred_batch=deferred
            )
        self._loaded.pop((batch.launch_id, batch.channel, batch.ident), None)
        BATCHES.labels(batch.channel, "expanded").inc()
        return None

    def _drop_deferred(
        self, view: CampaignView, batch: BatchMessage, key: dict[str, Any], *, reason: str, cursor: int | None = None
    ) -> None:
        """A quiet-hours batch released after its campaign was cancelled (failed), or into a channel
        dropping non-urgent messages: its remaining recipients are suppressed — counted, logged, and
        no longer waiting — and it leaves the pending set."""
        cursor = read_cursor(self.redis, **key) if cursor is None else cursor
        remaining = batch.user_ids[cursor:]
        if remaining:
            SUPPRESSED.labels(batch.channel, reason).inc(len(remaining))
            self._log_outcomes(view, batch, {user_id: reason for user_id in remaining}, [])
        record_expansion(
            self.redis,
            **key,
            cursor=len(batch.user_ids),
            queued=0,
            suppressed=len(remaining),
            extra=0,
            done=True,
            reasons={reason: len(remaining)},
            undeferred_users=len(remaining),
            deferred_batch=True,
        )

    def _buckets(self, view: CampaignView, channel: str) -> list[_Bucket]:
        if not self.config.pacing or not view.throttle:
            return []
        return [_Bucket(f"campaign-pace:campaign:{view.id}", float(view.throttle), throttle_burst(view.throttle))]

    def _max_backlog(self, channel: str) -> int:
        """How many messages may wait for the channel's workers. Each worker holds up to a poll batch
        (WORKER_BATCH_SIZE) in flight, still counted as lag until it commits; to never starve, each
        needs another batch ready when it polls again: 2 x batch x workers. And at least
        ``lead_seconds`` of the channel's contract rate, so a tick of backpressure never drains it."""
        if self.config.max_backlog:
            return int(self.config.max_backlog)
        batch = int(getattr(settings, "WORKER_BATCH_SIZE", 500))
        workers = max(1, self.backlog.workers(channel))
        contract = self.contracts.rate(channel) or 0.0
        return max(2 * batch * workers, math.ceil(contract * self.config.lead_seconds))

    def _load(self, batch: BatchMessage) -> dict[int, BatchRecipient]:
        key = (batch.launch_id, batch.channel, batch.ident)
        loaded = self._loaded.get(key)
        if loaded is None:
            loaded = self._loaded[key] = batch_recipients(batch.user_ids)
            while len(self._loaded) > LOADED_BATCHES:
                self._loaded.popitem(last=False)
        else:
            self._loaded.move_to_end(key)
        return loaded

    def _expand_chunk(self, view: CampaignView, batch: BatchMessage, ids: list[int], *, start: int) -> _Chunk:
        """Produce the chunk's messages (not yet flushed), schedule its quiet-hours recipients and log
        its suppressions. Batched like the dispatcher: preference states in one MGET, frequency caps
        in one pipeline, deferred recipients in one insert per due time, log rows in one statement."""
        loaded = self._load(batch)
        channel = batch.channel
        states = preferences_get_many(ids, redis_client=self.redis)
        now = self.wall_clock()
        topic = delivery_topic(channel, lane_for(CAMPAIGN_PRIORITY))
        chunk = _Chunk()
        suppressed: dict[int, str] = {}
        candidates: list[tuple[int, BatchRecipient, PreferenceState]] = []
        for user_id in ids:
            recipient = loaded.get(user_id)
            if recipient is None:
                suppressed[user_id] = "unknown_recipient"
                continue
            state = states.get(user_id) or PreferenceState(user_id=user_id)
            allowed, reason = is_allowed(
                state, category=view.category, channel=channel, type_default_channels=view.default_channels
            )
            if not allowed:
                suppressed[user_id] = reason
                continue
            if address_for(channel, recipient.contact) is None:
                suppressed[user_id] = "no_contact_point"
                continue
            candidates.append((user_id, recipient, state))
        if batch.caps_taken:  # taken when this quiet-hours batch was deferred
            caps = [ALLOWED_CAP] * len(candidates)
        else:
            caps = frequency_cap_take_many(
                self.redis,
                [
                    CapRequest(user_id, view.category, channel, state.caps_for(view.category))
                    for user_id, _r, state in candidates
                ],
                now=now,
            )
        waiting: dict[dt.datetime, list[int]] = {}
        for (user_id, recipient, state), cap in zip(candidates, caps, strict=True):
            if not cap.allowed:
                suppressed[user_id] = "frequency_cap"
                continue
            quiet_end = quiet_hours_end(state, now)
            if quiet_end is not None:
                waiting.setdefault(_due_minute(quiet_end), []).append(user_id)
                continue
            try:
                parts = build_recipient_messages(
                    view,
                    channel=channel,
                    launch_id=batch.launch_id,
                    contact=recipient.contact,
                    recipient={"first_name": recipient.first_name, "attributes": recipient.attributes},
                    now=now,
                    statics=self.statics,
                )
            except RenderError as exc:
                # Copy was validated with a sample recipient; a failure here is this recipient's data.
                suppressed[user_id] = "render_error"
                log.warning("campaign copy did not render", extra={"user_id": user_id, "error": str(exc)})
                continue
            if not parts:
                suppressed[user_id] = "no_contact_point"
                continue
            for part in parts:
                self._produce(topic, str(user_id), encode(part), {Header.IDEMPOTENCY_KEY: part["id"]})
                chunk.queued += 1
        chunk.suppressed = len(suppressed)
        chunk.reasons = dict(Tally(suppressed.values()))
        for reason, n in chunk.reasons.items():
            SUPPRESSED.labels(channel, reason).inc(n)
        scheduled: list[tuple[str, list[int]]] = []
        if suppressed or waiting:
            with transaction.atomic():  # the deferred batches and their log rows together
                scheduled = self._defer(batch, waiting, start=start, now=now)
                self._log_outcomes(view, batch, suppressed, [u for _ident, users in scheduled for u in users])
        chunk.deferred_batches = [ident for ident, _users in scheduled]
        chunk.deferred_users = sum(len(users) for _ident, users in scheduled)
        if chunk.deferred_users:
            DEFERRED.labels(channel).inc(chunk.deferred_users)
        RELEASED.labels(channel).inc(chunk.queued)
        return chunk

    def _defer(
        self, batch: BatchMessage, waiting: dict[dt.datetime, list[int]], *, start: int, now: dt.datetime
    ) -> list[tuple[str, list[int]]]:
        """Schedule one quiet-hours batch per due time (the existing ScheduledMessage mechanism: the
        dispatcher's tick moves due rows to the outbox, the relay to ``notif.<channel>.batch``, and
        this expander takes it from there). Returns [(batch id, user ids)].

        The id is deterministic — (this batch, chunk start, due minute) — so a chunk expanded again
        after a crash schedules a batch with the same id (and the same users, or a prefix of them,
        the chunk's users being in batch order); whichever copy is expanded first moves the shared
        cursor and the other finds nothing left (or only the rest) to do."""
        if not waiting:
            return []
        out: list[tuple[str, list[int]]] = []
        items: list[Deferred] = []
        for due, user_ids in sorted(waiting.items()):
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
            }
            ident = str(deferred.ident)
            items.append(
                Deferred(
                    due,
                    channel_topic(batch.channel, "batch"),
                    f"{batch.launch_id}:{ident}",
                    payload,
                    {Header.IDEMPOTENCY_KEY: f"{batch.launch_id}:{batch.channel}:{ident}"},
                )
            )
            out.append((ident, user_ids))
        schedule_messages(items)
        return out

    def _log_outcomes(
        self, view: CampaignView, batch: BatchMessage, suppressed: dict[int, str], scheduled: list[int]
    ) -> None:
        """Delivery-log rows of the chunk's suppressions and quiet-hours deferrals (one statement;
        the first decision wins). A recipient released from a quiet-hours batch already has a
        ``scheduled`` row: if suppressed now (cap, opt-out meanwhile, cancel), that row is settled
        (one more statement); if sent, the worker moves it on as for any campaign message."""
        entries = [
            LogEntry(batch.launch_id, user_id, batch.channel, view.type_key, DeliveryStatus.SUPPRESSED, reason)
            for user_id, reason in suppressed.items()
        ] + [
            LogEntry(batch.launch_id, user_id, batch.channel, view.type_key, DeliveryStatus.SCHEDULED, "quiet_hours")
            for user_id in scheduled
        ]
        record_dispatch_outcomes(entries)
        if batch.part and suppressed:
            settle_scheduled_logs(batch.launch_id, batch.channel, suppressed)

    # -- producing -----------------------------------------------------------------------------------
    def _produce(self, topic: str, key: str, value: bytes, headers: dict[str, str]) -> None:
        self._acked.produce(topic, key, value, headers)

    def _flush(self) -> None:
        # Crash rather than move the cursor: the chunk is expanded again, dedup absorbs repeats.
        self._acked.flush()

    def _dead_letter(self, message: Message, error: str) -> None:
        topic = message.topic()
        channel = topic.rsplit(".", 2)[-2] if topic.endswith(".batch") else "email"
        BATCHES.labels(channel, "invalid").inc()
        log.warning("invalid batch message sent to DLQ", extra={"topic": topic, "error": error})
        headers = {Header.ORIGIN_TOPIC: topic, Header.ERROR_CLASS: "invalid_batch", Header.ERROR: error[:1000]}
        self._produce(
            channel_topic(channel, "dlq"),
            (message.key() or b"").decode(errors="replace"),
            message.value() or b"",
            headers,
        )


def expander_topics(channels: Sequence[str]) -> list[str]:
    return [channel_topic(channel, "batch") for channel in channels]


def build_expander_runner(
    channels: Sequence[str] | None = None,
    *,
    group: str | None = None,
    batch_size: int | None = None,
    producer: Producer | None = None,
    redis_client: redis.Redis | None = None,
    config: ExpanderConfig | None = None,
) -> ConsumerRunner:
    from notifications.bus.config import producer_config
    from notifications.redis_client import get_redis

    channels = list(channels or ALL_CHANNELS)
    expander = BatchExpander(
        producer=producer or Producer(producer_config()),
        redis_client=redis_client or get_redis(),
        config=config,
    )
    return ConsumerRunner(
        RunnerConfig(
            role="campaign-expander",
            topics=expander_topics(channels),
            group=group or "campaign-expander",
            # Each batch message carries up to 50k recipients: a few per poll is plenty.
            batch_size=batch_size or int(getattr(settings, "CAMPAIGN_EXPANDER_POLL_BATCH", 8)),
            poll_timeout=0.2,
        ),
        expander,
    )
