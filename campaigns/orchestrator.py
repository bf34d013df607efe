"""The campaign orchestrator: launch events in, one ``notif.<channel>.batch`` message per page and channel out.

Launch events become ``CampaignLaunch`` rows; the runner's ``tick`` then pages each running launch's
audience with keyset pagination, one checkpointed page per step, and flushes progress. How and why:
``docs/architecture.md``, "Campaigns" (Orchestrator).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import redis
from confluent_kafka import Message, Producer
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from prometheus_client import Counter, Histogram

from campaigns.expansion.building import content_version
from campaigns.models import Campaign, CampaignLaunch, CampaignState
from campaigns.progress import expanded_count, flush_progress, outstanding, pending_deferred_count, read_counters
from campaigns.selectors import audience_count, audience_page
from campaigns.services import campaign_complete, campaign_fail, campaign_transition
from notifications.bus.producing import AckedProducer
from notifications.bus.runner import ConsumerRunner
from notifications.bus.topics import channel_topic
from notifications.dispatch.messages import Header
from notifications.redis_connect import REDIS_ERRORS

log = logging.getLogger(__name__)

EVENTS = Counter("campaign_orchestrator_events_total", "Campaign events consumed", ["type"])
BATCHES = Counter("campaign_orchestrator_batches_total", "Batch messages emitted", ["channel"])
RECIPIENTS = Counter("campaign_orchestrator_recipients_total", "Recipients put in batches", ["channel"])
PAGE_SECONDS = Histogram(
    "campaign_orchestrator_page_seconds",
    "Time to read, emit and checkpoint one page",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)

#: Kafka's default message size limit is 1 MB; 50k ids of up to 10 digits is ~550 KB of JSON.
MAX_BATCH_SIZE = 50_000


def orchestrator_settings() -> dict[str, Any]:
    batch_size = int(getattr(settings, "CAMPAIGN_BATCH_SIZE", 20_000))
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"CAMPAIGN_BATCH_SIZE must be between 1 and {MAX_BATCH_SIZE} (10k–50k recommended)")
    return {
        "batch_size": batch_size,
        "max_batches_per_second": float(getattr(settings, "CAMPAIGN_MAX_PAGES_PER_SECOND", 0) or 0),
        "step_budget": float(getattr(settings, "CAMPAIGN_ORCHESTRATOR_STEP_SECONDS", 1.0)),
        "flush_interval": float(getattr(settings, "CAMPAIGN_PROGRESS_FLUSH_SECONDS", 2.0)),
    }


class CampaignOrchestrator:
    """BatchHandler for ``notif.campaigns`` plus the paging work in ``tick``."""

    def __init__(
        self,
        *,
        producer: Producer,
        redis_client: redis.Redis,
        batch_size: int | None = None,
        max_pages_per_second: float | None = None,
        step_budget: float | None = None,
        flush_interval: float | None = None,
        clock: Callable[[], dt.datetime] = timezone.now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        conf = orchestrator_settings()
        self.producer = producer
        self.redis = redis_client
        self.batch_size = batch_size or conf["batch_size"]
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch size must be between 1 and {MAX_BATCH_SIZE}")
        pages = conf["max_batches_per_second"] if max_pages_per_second is None else max_pages_per_second
        self.min_page_interval = 1.0 / pages if pages else 0.0
        self.step_budget = conf["step_budget"] if step_budget is None else step_budget
        self.flush_interval = conf["flush_interval"] if flush_interval is None else flush_interval
        self.jit = bool(getattr(settings, "CAMPAIGN_PAGE_QUERY_JIT", False))
        self.clock = clock
        self.monotonic = monotonic
        self._acked = AckedProducer(producer, "orchestrator")
        self._last_flush = float("-inf")
        self._last_page = float("-inf")

    # -- launch events -------------------------------------------------------------------------------
    def handle_batch(self, messages: list[Message]) -> None:
        launches: list[CampaignLaunch] = []
        for message in messages:
            try:
                event = orjson.loads(message.value() or b"")
                event_type = event.get("type") if isinstance(event, dict) else None
            except orjson.JSONDecodeError:
                event_type = None
            EVENTS.labels(event_type or "invalid").inc()
            if event_type != "campaign.launched":
                if event_type is None:
                    log.warning("unreadable campaign event skipped", extra={"offset": message.offset()})
                continue  # state changes are read from the campaign row; these events are an audit trail
            try:
                launch_id = uuid.UUID(str(event["launch_id"]))
                scheduled_for = parse_datetime(str(event.get("scheduled_for") or "")) or self.clock()
                launches.append(
                    CampaignLaunch(
                        launch_id=launch_id, campaign_id=int(event["campaign_id"]), scheduled_for=scheduled_for
                    )
                )
            except (KeyError, TypeError, ValueError):
                log.warning("malformed launch event skipped", extra={"offset": message.offset()})
        if launches:
            self.record_launches(launches)

    def record_launches(self, launches: list[CampaignLaunch]) -> int:
        """Store launches whose campaign still carries that launch id (idempotent by launch id)."""
        current = set(
            Campaign.objects.filter(launch_id__in=[x.launch_id for x in launches]).values_list("pk", "launch_id")
        )
        fresh = [x for x in launches if (x.campaign_id, x.launch_id) in current]
        CampaignLaunch.objects.bulk_create(fresh, ignore_conflicts=True)
        return len(fresh)

    # -- paging --------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Between polls: flush progress when due, then emit pages for up to ``step_budget`` seconds."""
        now = self.monotonic()
        if now - self._last_flush >= self.flush_interval:
            self._last_flush = now
            self.update_progress()
        deadline = self.monotonic() + self.step_budget
        while self.monotonic() < deadline:
            if self.monotonic() - self._last_page < self.min_page_interval:
                break
            if not self.step():
                break

    def step(self) -> bool:
        """Emit one page of one due launch. Returns False when there was nothing to do."""
        started = time.perf_counter()
        now = self.clock()
        with transaction.atomic():
            launch = (
                CampaignLaunch.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("campaign", "campaign__notification_type")
                .filter(
                    emission_finished_at__isnull=True,
                    scheduled_for__lte=now,
                    campaign__launch_id=F("launch_id"),
                    campaign__state__in=[CampaignState.SCHEDULED, CampaignState.RUNNING],
                )
                .order_by("next_batch", "scheduled_for")
                .first()
            )
            if launch is None:
                return False
            campaign = launch.campaign
            if not self.jit:
                # A 50k-row LIMIT crosses jit_above_cost: PostgreSQL then spends most of the page
                # compiling the query to save a few ms of execution (docs/architecture.md, "Campaigns").
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL jit = off")
            if campaign.state == CampaignState.SCHEDULED and not self._start(campaign, now):
                return True
            failure = None
            try:
                self._emit_page(launch, campaign)
            except ValidationError as exc:  # the predicate no longer compiles (a field left the whitelist)
                transaction.set_rollback(True)
                failure = f"audience predicate no longer valid: {'; '.join(exc.messages)}"
        if failure is not None:
            log.error("campaign failed", extra={"campaign_id": campaign.pk, "reason": failure})
            campaign_fail(campaign_id=campaign.pk, reason=failure)
        self._last_page = self.monotonic()
        PAGE_SECONDS.observe(time.perf_counter() - started)
        return True

    def _start(self, campaign: Campaign, now: dt.datetime) -> bool:
        if not campaign.notification_type.enabled:
            campaign_fail(
                campaign_id=campaign.pk, reason=f"notification type {campaign.notification_type.key} is disabled"
            )
            return False
        try:
            size = audience_count(campaign, now=now)
        except ValidationError as exc:
            campaign_fail(campaign_id=campaign.pk, reason=f"invalid audience predicate: {'; '.join(exc.messages)}")
            return False
        moved = campaign_transition(
            campaign_id=campaign.pk,
            to=CampaignState.RUNNING,
            expected=[CampaignState.SCHEDULED],
            now=now,
            started_at=now,
            audience_size=size,
        )
        if moved:
            campaign.state, campaign.started_at, campaign.audience_size = CampaignState.RUNNING, now, size
            log.info("campaign started", extra={"campaign_id": campaign.pk, "audience_size": size})
        return moved

    def _emit_page(self, launch: CampaignLaunch, campaign: Campaign) -> None:
        channels = list(campaign.channels or [])
        page = audience_page(
            campaign, channels=channels, after_id=launch.last_user_id, limit=self.batch_size, now=campaign.started_at
        )
        now = self.clock()
        if not page.user_ids:
            launch.emission_finished_at = now
            launch.save(update_fields=["emission_finished_at"])
            # The exact audience: everyone the pages matched (the count at the start was a snapshot).
            Campaign.objects.filter(pk=campaign.pk).update(audience_size=launch.matched)
            log.info("campaign emission finished", extra={"campaign_id": campaign.pk, "batches": launch.next_batch})
            return
        version = content_version(campaign)
        emitted = 0
        for channel in channels:
            user_ids = page.eligible[channel]
            if not user_ids:
                continue
            payload = {
                "v": 1,
                "type": "campaign.batch",
                "campaign_id": campaign.pk,
                "launch_id": str(launch.launch_id),
                "channel": channel,
                "batch": launch.next_batch,
                "user_ids": user_ids,
                "content": {"campaign_id": campaign.pk, "copy_version": version},
                "created_at": now.isoformat(),
                # Every batch of a launch logs on the launch's day: a redelivered or deferred batch too.
                "log_day": launch.created_at.astimezone(dt.UTC).date().isoformat(),
            }
            self._acked.produce(
                channel_topic(channel, "batch"),
                f"{launch.launch_id}:{launch.next_batch}",
                orjson.dumps(payload),
                {Header.IDEMPOTENCY_KEY: f"{launch.launch_id}:{channel}:{launch.next_batch}"},
            )
            emitted += 1
            BATCHES.labels(channel).inc()
            RECIPIENTS.labels(channel).inc(len(user_ids))
        # Every batch of the page acknowledged before the checkpoint moves (a failure raises: the
        # transaction rolls back, the checkpoint stays, the page is emitted again).
        self._acked.flush()
        per_channel = dict(launch.emitted_per_channel or {})
        recipients = suppressed = 0
        for channel in channels:
            n = len(page.eligible[channel])
            per_channel[channel] = per_channel.get(channel, 0) + n
            recipients += n
            suppressed += len(page.user_ids) - n
        launch.last_user_id = page.last_user_id
        launch.next_batch += 1
        launch.batch_messages += emitted
        launch.emitted_per_channel = per_channel
        launch.matched += len(page.user_ids)
        launch.save(update_fields=["last_user_id", "next_batch", "batch_messages", "emitted_per_channel", "matched"])
        Campaign.objects.filter(pk=campaign.pk).update(
            batches_emitted=F("batches_emitted") + emitted,
            recipients_emitted=F("recipients_emitted") + recipients,
            suppressed_preferences=F("suppressed_preferences") + suppressed,
        )

    # -- progress and completion ---------------------------------------------------------------------
    def update_progress(self) -> None:
        """Copy the Redis counters to the campaign rows and complete the campaigns that are done."""
        try:
            flush_progress(redis_client=self.redis)
            self.complete_finished()
        except REDIS_ERRORS:
            log.warning("progress flush skipped (Redis unavailable)", exc_info=True)

    def complete_finished(self) -> int:
        """Running campaigns whose every batch is emitted and expanded, whose quiet-hours batches
        (deferred by the expander) are expanded too, and whose every queued message has its outcome
        (sent, failed, dropped) → completed. Until then a cancel or pause still reaches the recipients
        waiting for their quiet hours to end, and the campaign shows what is still on its way."""
        completed = 0
        for launch in CampaignLaunch.objects.filter(
            emission_finished_at__isnull=False,
            campaign__state=CampaignState.RUNNING,
            campaign__launch_id=F("launch_id"),
        ).select_related("campaign"):
            expanded = expanded_count(self.redis, campaign_id=launch.campaign_id, launch_id=str(launch.launch_id))
            if expanded < launch.batch_messages:
                continue
            if pending_deferred_count(self.redis, campaign_id=launch.campaign_id, launch_id=str(launch.launch_id)):
                continue
            if outstanding(read_counters(self.redis, [launch.campaign_id])[launch.campaign_id]):
                continue
            if campaign_complete(campaign_id=launch.campaign_id):
                completed += 1
                log.info("campaign completed", extra={"campaign_id": launch.campaign_id})
        return completed


def build_orchestrator_runner(
    *,
    group: str | None = None,
    producer: Producer | None = None,
    redis_client: redis.Redis | None = None,
    **kwargs: Any,
) -> ConsumerRunner:
    """`run_campaign_orchestrator`'s loop; `kwargs` go to the orchestrator (page size, pace)."""
    from notifications.bus.config import producer_config
    from notifications.bus.consumers import consumer
    from notifications.redis_client import get_redis

    orchestrator = CampaignOrchestrator(
        producer=producer or Producer(producer_config(**{"message.max.bytes": 2_000_000})),
        redis_client=redis_client or get_redis(),
        **{key: value for key, value in kwargs.items() if value is not None},
    )
    return ConsumerRunner(
        consumer("campaign-orchestrator").runner_config(group=group, batch_size=100, poll_timeout=0.1), orchestrator
    )
