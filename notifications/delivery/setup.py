"""Wiring a channel worker from settings and the `Provider` table (used by `run_worker` and tests)."""

import logging
import math
import time
from collections.abc import Callable

from confluent_kafka import Producer
from django.conf import settings
from prometheus_client import Counter

from notifications.bus.config import producer_config
from notifications.bus.runner import RunnerConfig
from notifications.bus.topics import RETRY_TIERS, delivery_topic
from notifications.delivery.backoff import RetryPolicy
from notifications.delivery.circuit_breaker import CircuitBreaker
from notifications.delivery.dedup import DedupStore, required_lease_ms
from notifications.delivery.pipeline import PipelinedWorkerRunner
from notifications.delivery.token_bucket import TokenBucket
from notifications.delivery.worker import ChannelWorker, ProviderSlot, WorkerConfig
from notifications.delivery_log import record_delivery_outcomes
from notifications.dispatch.messages import ChannelMessage
from notifications.models import KillSwitch, KillSwitchMode, Provider
from notifications.priority import Lane
from notifications.providers.capacity import channel_capacity
from notifications.providers.registry import adapter_for, channel_send_bound
from notifications.providers.results import SendResult
from notifications.redis_client import get_redis

log = logging.getLogger(__name__)

DEDUP_FAIL_OPEN = Counter(
    "dedup_fail_open_total", "Sends made without a dedup claim because Redis was unreachable", ["channel"]
)
PROVIDER_REFRESH_SECONDS = 5.0
WORKER_HEARTBEAT_MS = 500


class ProviderTable:
    """The channel's providers in failover order, re-read every few seconds (admin edits go live).

    Adapters and circuit breakers survive a refresh, so a breaker's state is not lost."""

    def __init__(self, channel: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.channel = channel
        self._clock = clock
        self._slots: dict[str, ProviderSlot] = {}
        self._order: list[ProviderSlot] = []
        self._loaded_at = float("-inf")

    def __call__(self) -> list[ProviderSlot]:
        return self._order

    def capacity(self) -> float | None:
        """The channel's contract rate as its enabled providers allow it (`channel_capacity`)."""
        return channel_capacity(self.channel, [(slot.kind, slot.rate) for slot in self._order if slot.enabled])

    def refresh_if_due(self) -> None:
        """Re-read the table (sync: called by the worker outside its event loop)."""
        if self._clock() - self._loaded_at >= PROVIDER_REFRESH_SECONDS:
            self.refresh()

    def refresh(self) -> None:
        self._loaded_at = self._clock()
        paused = {
            k.provider
            for k in KillSwitch.objects.filter(channel=self.channel).exclude(provider="")
            if k.mode == KillSwitchMode.PAUSE
        }
        order = []
        for row in Provider.objects.filter(channel=self.channel).order_by("priority", "name"):
            slot = self._slots.get(row.name)
            if slot is None:
                slot = ProviderSlot(
                    name=row.name,
                    kind=row.kind,
                    adapter_factory=adapter_for,
                    rate=row.rate,
                    burst=row.burst,
                    reserve=row.transactional_reserve,
                    breaker=CircuitBreaker(
                        f"provider:{row.name}",
                        failure_threshold=settings.PROVIDER_BREAKER_FAILURES,
                        cool_down_seconds=settings.PROVIDER_BREAKER_COOL_DOWN,
                    ),
                )
                self._slots[row.name] = slot
            slot.rate, slot.burst, slot.reserve = row.rate, row.burst, row.transactional_reserve
            slot.enabled = row.enabled and row.name not in paused
            order.append(slot)
        self._order = order


def invalidate_contact(message: ChannelMessage, result: SendResult) -> None:
    """A dead address or token is marked invalid so the dispatcher skips it from now on."""
    from preferences.services import contact_point_invalidate

    channel, to = message["channel"], message.get("to", {})
    reason = f"{result.provider}: {result.error_code or result.status_code} {result.message}"[:200]
    if channel == "push":
        tokens = result.invalid_tokens or [t for _platform, t in to.get("devices", [])]
        for token in tokens:
            contact_point_invalidate(user_id=message["user_id"], channel="push", address=token, reason=reason)
        return
    address = to.get("email") or to.get("phone") or to.get("url")
    contact_point_invalidate(user_id=message["user_id"], channel=channel, address=address, reason=reason)


def build_worker(channel: str, *, producer: Producer | None = None) -> ChannelWorker:
    redis_client = get_redis()
    dedup = DedupStore(
        redis_client,
        settings.REDIS_KEY_PREFIX,
        # Email sends run in threads that cannot be cancelled mid-send: allow queue wait + 2 timeouts.
        lease_ms=required_lease_ms(
            channel_send_bound(channel) * (4 if channel == "email" else 1), settings.WORKER_IN_PROCESS_RETRIES + 1
        ),
        sent_ttl_ms=int(settings.DEDUP_SENT_TTL * 1000),
        on_fail_open=lambda n: DEDUP_FAIL_OPEN.labels(channel).inc(n),
    )
    table = ProviderTable(channel)
    return ChannelWorker(
        config=WorkerConfig(
            channel=channel,
            concurrency=settings.WORKER_CONCURRENCY,
            max_in_process_retries=settings.WORKER_IN_PROCESS_RETRIES,
            rate_window_margin=settings.RATE_LIMIT_WINDOW_MARGIN,
        ),
        providers=table,
        refresh_providers=table.refresh_if_due,
        dedup=dedup,
        bucket=TokenBucket(redis_client, settings.REDIS_KEY_PREFIX),
        policy=RetryPolicy(
            max_attempts=settings.RETRY_MAX_ATTEMPTS,
            max_age_seconds=settings.RETRY_MAX_AGE,
            base=settings.RETRY_BASE_DELAY,
            cap=settings.RETRY_MAX_DELAY,
            in_process_threshold=settings.RETRY_IN_PROCESS_THRESHOLD,
        ),
        producer=producer or Producer(producer_config()),
        on_outcomes=record_delivery_outcomes,
        on_invalid_contact=invalidate_contact,
        on_campaign_outcomes=_campaign_outcomes,
        sent_tally=_campaign_sent_tally,
    )


def _campaign_outcomes(outcomes: list[tuple[str, str, dict]]) -> None:
    from campaigns.progress import record_outcomes

    record_outcomes(outcomes)


def _campaign_sent_tally(message: ChannelMessage) -> tuple[str, str] | None:
    meta = message.get("meta") or {}
    if not meta.get("campaign_id") or not meta.get("launch_id"):
        return None  # not a campaign message, or a marketer's test send
    from campaigns.progress import sent_tally

    return sent_tally(int(meta["campaign_id"]))


def worker_topics(channel: str, lane: Lane = Lane.PRIORITY) -> list[str]:
    """A lane of the channel and its retry tiers."""
    return [delivery_topic(channel, lane)] + [delivery_topic(channel, lane, tier) for tier, _ in RETRY_TIERS]


def bulk_in_flight_limit(capacity: float | None, *, concurrency: int) -> int:
    """Bulk jobs a worker may hold: WORKER_BULK_LEAD_SECONDS of the channel's contract, at least
    WORKER_BULK_MIN_IN_FLIGHT, at most half the concurrency (the other half is always there for the
    priority lane's sends)."""
    wanted = math.ceil((capacity or 0.0) * settings.WORKER_BULK_LEAD_SECONDS)
    return max(1, min(concurrency // 2, max(settings.WORKER_BULK_MIN_IN_FLIGHT, wanted)))


def build_worker_runner(
    channel: str, *, batch_size: int | None = None, group: str | None = None
) -> PipelinedWorkerRunner:
    """`run_worker`'s loop: polls the next batch while the sends of the last are in flight."""
    worker = build_worker(channel)
    table = worker.providers
    return PipelinedWorkerRunner(
        RunnerConfig(
            role=f"worker-{channel}",
            topics=worker_topics(channel),
            bulk_topics=worker_topics(channel, Lane.BULK) if settings.PRIORITY_LANES else (),
            group=group or f"worker.{channel}",
            batch_size=batch_size or settings.WORKER_BATCH_SIZE,
            poll_timeout=0.2,
            # A member learns of a rebalance from a heartbeat answer, and a cooperative rebalance
            # takes two rounds: at the 3 s default, workers joining a busy group waited ~6 s for
            # their partitions while the others' sends dried up (measured with 4 and 16 workers).
            consumer_overrides={"heartbeat.interval.ms": WORKER_HEARTBEAT_MS},
        ),
        worker,
        bulk_limit=lambda: bulk_in_flight_limit(table.capacity(), concurrency=worker.config.concurrency),
    )
