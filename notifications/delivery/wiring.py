"""Assembling a channel worker and its runner from settings, the Provider table and the campaign hooks."""

import math
import os
import re
import socket
import uuid
from collections.abc import Callable

from confluent_kafka import Producer
from django.conf import settings
from prometheus_client import Counter

from notifications.bus.config import producer_config
from notifications.bus.consumers import consumer
from notifications.bus.producing import AckedProducer
from notifications.delivery.backoff import RetryPolicy
from notifications.delivery.claim_owners import Owner, new_incarnation
from notifications.delivery.dedup import DedupStore, required_lease_ms
from notifications.delivery.endpoint_backoff import EndpointBackoff, EndpointBackoffConfig
from notifications.delivery.kill_switches import WorkerSwitches
from notifications.delivery.outcomes import Outcomes
from notifications.delivery.pipeline import PipelinedWorkerRunner
from notifications.delivery.provider_slots import ProviderTable
from notifications.delivery.token_bucket import TokenBucket
from notifications.delivery.worker import ChannelWorker, WorkerConfig
from notifications.delivery_log import record_delivery_outcomes
from notifications.dispatch.messages import ChannelMessage
from notifications.providers.registry import channel_send_bound
from notifications.providers.results import SendResult
from notifications.redis_client import get_redis

DEDUP_FAIL_OPEN = Counter(
    "dedup_fail_open_total", "Sends made without a dedup claim because Redis was unreachable", ["channel"]
)
#: A member learns of a rebalance from a heartbeat answer, and a cooperative rebalance takes two
#: rounds: at the 3 s default, workers joining a busy group waited ~6 s for their partitions.
WORKER_HEARTBEAT_MS = 500


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


def worker_instance(channel: str) -> str:
    """The name a channel worker's dedup claims carry: the role and its static member name
    (`CONSUMER_INSTANCE`), the same after a restart, so a restarted worker takes its predecessor's
    claims over at once; without one, a name of this process alone."""
    name = settings.CONSUMER_INSTANCE or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return re.sub(r"[{}|]", "_", f"worker-{channel}.{name}")


def build_worker(channel: str, *, producer: Producer | None = None, dedup: DedupStore | None = None) -> ChannelWorker:
    redis_client = get_redis()
    dedup = dedup or DedupStore(
        redis_client,
        settings.REDIS_KEY_PREFIX,
        # Email sends may run in threads (anymail, SMTP) that cannot be cancelled mid-send: allow
        # the queue wait and two timeouts.
        lease_ms=required_lease_ms(
            channel_send_bound(channel) * (4 if channel == "email" else 1), settings.WORKER_IN_PROCESS_RETRIES + 1
        ),
        sent_ttl_ms=int(settings.DEDUP_SENT_TTL * 1000),
        tally_ttl_ms=settings.CAMPAIGN_STATE_TTL_SECONDS * 1000,
        on_fail_open=lambda n: DEDUP_FAIL_OPEN.labels(channel).inc(n),
        owner=Owner(worker_instance(channel), new_incarnation()),
    )
    from campaigns.delivery_hooks import CampaignHooks

    hooks = CampaignHooks(redis_client)
    table = ProviderTable(channel)
    switches = WorkerSwitches(channel)

    def refresh() -> None:  # on the consumer thread, before each batch: no query in the event loop
        table.refresh_if_due()
        switches.refresh_if_due()

    if channel == "webhook":
        refresh = _with_webhook_endpoints(refresh)
    return ChannelWorker(
        config=WorkerConfig(
            channel=channel,
            concurrency=settings.WORKER_CONCURRENCY,
            max_in_process_retries=settings.WORKER_IN_PROCESS_RETRIES,
            rate_window_margin=settings.RATE_LIMIT_WINDOW_MARGIN,
            redis_hold_seconds=settings.WORKER_REDIS_HOLD_SECONDS,
            liveness_ttl=settings.WORKER_LIVENESS_TTL,
            liveness_interval=settings.WORKER_LIVENESS_INTERVAL,
        ),
        providers=table,
        refresh_providers=refresh,
        dedup=dedup,
        bucket=TokenBucket(redis_client, settings.REDIS_KEY_PREFIX),
        policy=RetryPolicy(
            max_attempts=settings.RETRY_MAX_ATTEMPTS,
            max_age_seconds=settings.RETRY_MAX_AGE,
            base=settings.RETRY_BASE_DELAY,
            cap=settings.RETRY_MAX_DELAY,
            in_process_threshold=settings.RETRY_IN_PROCESS_THRESHOLD,
        ),
        outcomes=Outcomes(
            channel=channel,
            producer=AckedProducer(producer or Producer(producer_config()), f"worker-{channel}"),
            on_outcomes=record_delivery_outcomes,
            on_invalid_contact=invalidate_contact,
            on_meta_outcomes=hooks.record,
        ),
        hooks=hooks,
        switches=switches,
        endpoints=EndpointBackoff(
            redis_client,
            settings.REDIS_KEY_PREFIX,
            config=EndpointBackoffConfig(
                failure_threshold=settings.WEBHOOK_ENDPOINT_FAILURE_THRESHOLD,
                failure_pause=settings.WEBHOOK_ENDPOINT_FAILURE_PAUSE,
                max_pause=settings.WEBHOOK_ENDPOINT_MAX_PAUSE,
            ),
        ),
    )


def _with_webhook_endpoints(refresh_providers: Callable[[], None]) -> Callable[[], None]:
    """The provider table's refresh, then the registered webhook endpoints' (read at the first batch)."""
    from notifications.webhooks.directory import endpoint_directory

    directory = endpoint_directory()
    directory.expire()

    def refresh() -> None:
        refresh_providers()
        directory.refresh_if_due()

    return refresh


def bulk_in_flight_limit(capacity: float | None, *, concurrency: int) -> int:
    """Bulk jobs a worker may hold: WORKER_BULK_LEAD_SECONDS of the channel's contract, at least
    WORKER_BULK_MIN_IN_FLIGHT, at most half the concurrency (the other half is always there for the
    priority lane's sends)."""
    wanted = math.ceil((capacity or 0.0) * settings.WORKER_BULK_LEAD_SECONDS)
    return max(1, min(concurrency // 2, max(settings.WORKER_BULK_MIN_IN_FLIGHT, wanted)))


def build_worker_runner(
    channel: str, *, batch_size: int | None = None, group: str | None = None, dedup: DedupStore | None = None
) -> PipelinedWorkerRunner:
    """`run_worker`'s loop: polls the next batch while the sends of the last are in flight."""
    worker = build_worker(channel, dedup=dedup)
    table = worker.providers
    return PipelinedWorkerRunner(
        consumer(f"worker-{channel}").runner_config(
            group=group,
            batch_size=batch_size or settings.WORKER_BATCH_SIZE,
            poll_timeout=0.2,
            consumer_overrides={"heartbeat.interval.ms": WORKER_HEARTBEAT_MS},
        ),
        worker,
        bulk_limit=lambda: bulk_in_flight_limit(table.capacity(), concurrency=worker.config.concurrency),
    )
