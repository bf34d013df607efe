"""Pacing campaign messages: the channels' contract rates, the queue in front of their workers
(consumer-group lag read with the Kafka admin API), and permits from the campaign throttle's bucket."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from django.conf import settings

from campaigns.expansion.building import CAMPAIGN_PRIORITY
from campaigns.throttle import token_bucket_for
from notifications.bus.config import admin_config, consumer_config
from notifications.bus.lanes import lane_group
from notifications.bus.topics import delivery_topic
from notifications.delivery.token_bucket import Priority
from notifications.models import Provider
from notifications.priority import Lane, lane_for
from notifications.providers.capacity import channel_capacity

#: How often the channels' contract rates are re-read from the Provider table.
CONTRACT_REFRESH_SECONDS = 5.0
#: How often the channel topic's backlog (the workers' consumer lag) is measured.
BACKLOG_REFRESH_SECONDS = 0.25


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
    the lane's topic (``notif.<channel>.bulk`` for campaigns; a fanout event of a transactional type
    travels in ``notif.<channel>``) past the workers' committed offsets (a group that never committed
    counts the whole topic), and how many workers the group has. Measured at most every ``interval``
    seconds; what this process released since is added on top, so chunks in a row cannot all fill
    the same room."""

    def __init__(self, *, interval: float = BACKLOG_REFRESH_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._admin: AdminClient | None = None
        self._measured: dict[tuple[str, Lane], tuple[float, int, int]] = {}
        self._released: dict[tuple[str, Lane], int] = {}

    def waiting(self, channel: str, lane: Lane | None = None) -> int:
        return self._current(channel, lane or lane_for(CAMPAIGN_PRIORITY))[0]

    def workers(self, channel: str, lane: Lane | None = None) -> int:
        return self._current(channel, lane or lane_for(CAMPAIGN_PRIORITY))[1]

    def released(self, channel: str, n: int, lane: Lane | None = None) -> None:
        key = (channel, lane or lane_for(CAMPAIGN_PRIORITY))
        self._released[key] = self._released.get(key, 0) + n

    def _current(self, channel: str, lane: Lane) -> tuple[int, int]:
        key = (channel, lane)
        at, lag, members = self._measured.get(key, (float("-inf"), 0, 0))
        if self._clock() - at >= self.interval:
            lag, members = self._measure(channel, lane)
            self._measured[key] = (self._clock(), lag, members)
            self._released[key] = 0
        return lag + self._released.get(key, 0), members

    def _measure(self, channel: str, lane: Lane) -> tuple[int, int]:
        if self._admin is None:
            self._admin = AdminClient(admin_config())
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
    """The channel workers' consumer group, as their entry in the consumer registry names it."""
    from notifications.bus.consumers import consumer

    return consumer(f"worker-{channel}").group


@dataclass
class Bucket:
    """A global token bucket that a campaign's releases take from (today: its throttle's)."""

    name: str
    rate: float
    burst: int


class Pacer:
    """Release permits from global token buckets (today: the campaign throttle's); tokens granted
    beyond what a chunk used (recipients suppressed in it) are kept as local credit for the next."""

    def __init__(self, client: redis.Redis) -> None:
        self.tokens = token_bucket_for(client)
        self.credit: dict[str, float] = {}

    def permits(self, buckets: list[Bucket], want: int) -> tuple[int, float]:
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

    def spend(self, buckets: list[Bucket], used: int) -> None:
        for bucket in buckets:
            self.credit[bucket.name] = self.credit.get(bucket.name, 0.0) - used


def backlog_bound(channel: str, *, backlog: ChannelBacklog, contracts: ChannelContracts, lead_seconds: float) -> int:
    """How many messages may wait for the channel's workers. Each worker holds up to a poll batch
    (WORKER_BATCH_SIZE) in flight, still counted as lag until it commits; to never starve, each
    needs another batch ready when it polls again: 2 x batch x workers. And at least
    ``lead_seconds`` of the channel's contract rate, so a tick of backpressure never drains it."""
    batch = int(getattr(settings, "WORKER_BATCH_SIZE", 500))
    workers = max(1, backlog.workers(channel))
    contract = contracts.rate(channel) or 0.0
    return max(2 * batch * workers, math.ceil(contract * lead_seconds))
