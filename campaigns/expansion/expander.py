"""The campaign batch expander: ``notif.<channel>.batch`` in, paced per-recipient messages out.
Why it works this way: docs/architecture.md, "Campaigns" (Batch expansion)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from confluent_kafka import KafkaException, Message, Producer
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from prometheus_client import Counter

from campaigns.expansion.building import (
    BatchMessage,
    CampaignCache,
    CampaignView,
    InvalidBatch,
    parse_batch,
)
from campaigns.expansion.chunk import SUPPRESSED, expand_chunk, log_outcomes
from campaigns.expansion.pacing import (
    BACKLOG_REFRESH_SECONDS,
    Bucket,
    ChannelBacklog,
    ChannelContracts,
    Pacer,
    backlog_bound,
)
from campaigns.models import CampaignState
from campaigns.progress import read_cursor, record_expansion
from campaigns.rendering import StaticFieldCache
from campaigns.selectors import BatchRecipient, batch_recipients
from campaigns.throttle import throttle_burst
from notifications.bus.dead_letters import dead_letter_headers
from notifications.bus.producing import AckedProducer
from notifications.bus.runner import ConsumerRunner, Deferrals
from notifications.bus.topics import channel_topic
from notifications.channels import ALL_CHANNELS
from notifications.delivery.token_bucket import RateLimiterUnavailable
from notifications.dispatch.killswitch import KillSwitchBoard
from notifications.dispatch.screening import (
    KILL_SWITCH,
    kill_switch_drops,
    kill_switch_holds,
)
from notifications.priority import lane_for
from notifications.redis_connect import REDIS_ERRORS

log = logging.getLogger(__name__)

BATCHES = Counter("campaign_expander_batches_total", "Batch messages handled", ["channel", "outcome"])
BACKPRESSURE = Counter(
    "campaign_expander_backpressure_total", "Times a batch waited because notif.<channel> was backed up", ["channel"]
)

#: A wait for throttle tokens up to this long is slept in place; a longer one becomes a deferral.
MAX_INLINE_WAIT = 0.25
#: Re-check a paused campaign (or a paused/delayed channel) this often.
PAUSED_RECHECK_SECONDS = 1.0
KILL_SWITCH_RECHECK_SECONDS = 5.0
#: Batches whose recipients stay loaded in memory: a batch is worked through over several polls,
#: interleaved with the other partitions' batches (a 50k batch holds tens of megabytes).
LOADED_BATCHES = 8


def _active(view: CampaignView, batch: BatchMessage) -> bool:
    """Whether the batch may be expanded now. A quiet-hours batch of a campaign that completed anyway
    (its pending entry lost with Redis) is still delivered: those recipients were due a message."""
    return view.state == CampaignState.RUNNING or (bool(batch.part) and view.state == CampaignState.COMPLETED)


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
    """The handler of the ``notif.<channel>.batch`` topics (``manage.py run_batch_expander``)."""

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
        if kill_switch_holds(mode, urgent=view.urgent):
            return self.clock() + KILL_SWITCH_RECHECK_SECONDS
        cursor = read_cursor(self.redis, **key)
        total = len(batch.user_ids)
        if kill_switch_drops(mode, urgent=view.urgent):
            if deferred:
                self._drop_deferred(view, batch, key, reason=KILL_SWITCH, cursor=cursor)
                return None
            SUPPRESSED.labels(batch.channel, KILL_SWITCH).inc(max(0, total - cursor))
            record_expansion(
                self.redis,
                **key,
                cursor=total,
                queued=0,
                suppressed=max(0, total - cursor),
                extra=0,
                done=True,
                reasons={KILL_SWITCH: max(0, total - cursor)},
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
                    lane = lane_for(view.priority)
                    room = self._max_backlog(batch.channel) - self.backlog.waiting(batch.channel, lane)
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
            chunk = expand_chunk(
                view,
                batch,
                ids,
                start=cursor,
                loaded=self._load(batch),
                redis_client=self.redis,
                now=self.wall_clock(),
                statics=self.statics,
                produce=self._produce,
            )
            self.pacer.spend(buckets, chunk.queued)
            self.backlog.released(batch.channel, chunk.queued, lane_for(view.priority))
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
            log_outcomes(view, batch, {user_id: reason for user_id in remaining}, [])
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

    def _buckets(self, view: CampaignView, channel: str) -> list[Bucket]:
        if not self.config.pacing or not view.throttle:
            return []
        return [Bucket(f"campaign-pace:campaign:{view.id}", float(view.throttle), throttle_burst(view.throttle))]

    def _max_backlog(self, channel: str) -> int:
        """How many messages may wait for the channel's workers (``config.max_backlog``, else :func:`backlog_bound`)."""
        if self.config.max_backlog:
            return int(self.config.max_backlog)
        return backlog_bound(
            channel, backlog=self.backlog, contracts=self.contracts, lead_seconds=self.config.lead_seconds
        )

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
        headers = dead_letter_headers(origin_topic=topic, error_class="invalid_batch", error=error)
        self._produce(
            channel_topic(channel, "dlq"),
            (message.key() or b"").decode(errors="replace"),
            message.value() or b"",
            headers,
        )


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
    from notifications.bus.consumers import batch_topics, consumer
    from notifications.redis_client import get_redis

    channels = list(channels or ALL_CHANNELS)
    expander = BatchExpander(
        producer=producer or Producer(producer_config()),
        redis_client=redis_client or get_redis(),
        config=config,
    )
    return ConsumerRunner(
        consumer("campaign-expander").runner_config(
            topics=batch_topics(channels),
            group=group,
            # Each batch message carries up to 50k recipients: a few per poll is plenty.
            batch_size=batch_size or int(getattr(settings, "CAMPAIGN_EXPANDER_POLL_BATCH", 8)),
            poll_timeout=0.2,
        ),
        expander,
    )
