"""A role's Kafka consumers, one per lane, so bulk never sits in front of priority messages.

Each lane is its own consumer (group `<group>` for the priority lane, `<group>.bulk` for the bulk
lane): librdkafka prefetches into one queue per consumer, so a bulk backlog fetched ahead can never
delay a priority message, and the caller takes bulk only when and as much as it wants. Why not one
consumer with paused bulk partitions: `docs/architecture.md`, "Priority lanes".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from notifications.bus.config import consumer_config
from notifications.priority import Lane

log = logging.getLogger(__name__)

#: librdkafka prefetches up to 64 MB per consumer by default; the bulk lane's backlog is read on
#: demand, so a small prefetch bounds its memory and keeps a fetch ahead of the next poll.
BULK_PREFETCH = {"queued.max.messages.kbytes": 4096, "queued.min.messages": 2000}
#: A lane not polled for this long (its caller had no room for it) is polled for one message all
#: the same, so its consumer never exceeds max.poll.interval.ms and leaves the group.
KEEPALIVE_SECONDS = 30.0

RebalanceCallback = Callable[[Consumer, list[TopicPartition]], None]


def lane_group(group: str, lane: Lane) -> str:
    """The consumer group of a role's lane: `<group>` or `<group>.bulk`."""
    return group if lane is Lane.PRIORITY else f"{group}.bulk"


class LanedConsumer:
    """One consumer per lane that has topics; offsets, pauses and seeks go to the topic's consumer."""

    def __init__(
        self,
        group: str,
        topics: dict[Lane, Sequence[str]],
        overrides: dict[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topics = {lane: list(names) for lane, names in topics.items() if names}
        self.consumers: dict[Lane, Consumer] = {}
        for lane in self.topics:
            config = dict(overrides or {})
            if lane is Lane.BULK:
                config = {**BULK_PREFETCH, **config}
            self.consumers[lane] = Consumer(consumer_config(lane_group(group, lane), **config))
        self._lane_of = {topic: lane for lane, names in self.topics.items() for topic in names}
        self._clock = clock
        self._polled_at = {lane: clock() for lane in self.consumers}

    @property
    def lanes(self) -> list[Lane]:
        """The lanes this role reads, priority first."""
        return [lane for lane in (Lane.PRIORITY, Lane.BULK) if lane in self.consumers]

    def subscribe(self, *, on_assign: RebalanceCallback, on_revoke: RebalanceCallback) -> None:
        for lane, consumer in self.consumers.items():
            consumer.subscribe(self.topics[lane], on_assign=on_assign, on_revoke=on_revoke)

    def consume(self, lane: Lane, n: int, timeout: float) -> list[Message]:
        """Up to `n` usable messages of `lane` (partition-EOF events dropped; other errors raise):
        what is already fetched, else the first message within `timeout` and whatever came with it.

        Not `Consumer.consume(n, timeout)` alone: it returns only when `n` messages are there or the
        timeout expired, so a trickle of urgent messages would wait for the whole timeout at every
        stage of the pipeline."""
        self._polled_at[lane] = self._clock()
        consumer = self.consumers[lane]
        messages = consumer.consume(n, 0)
        if not messages and timeout > 0:
            messages = consumer.consume(1, timeout)
            if messages and n > 1:
                messages += consumer.consume(n - 1, 0)
        return [m for m in messages if usable(m)]

    def overdue(self, lane: Lane) -> bool:
        """True when `lane` has not been polled for KEEPALIVE_SECONDS."""
        return lane in self.consumers and self._clock() - self._polled_at[lane] >= KEEPALIVE_SECONDS

    def lane_of(self, topic: str) -> Lane:
        return self._lane_of.get(topic, Lane.PRIORITY)

    def lane_of_consumer(self, consumer: Consumer) -> Lane:
        """The lane of one of this object's consumers (rebalance callbacks receive the consumer)."""
        return next((lane for lane, c in self.consumers.items() if c is consumer), Lane.PRIORITY)

    def _by_consumer(self, partitions: list[TopicPartition]) -> list[tuple[Consumer, list[TopicPartition]]]:
        grouped: dict[Lane, list[TopicPartition]] = {}
        for tp in partitions:
            grouped.setdefault(self.lane_of(tp.topic), []).append(tp)
        return [(self.consumers[lane], tps) for lane, tps in grouped.items()]

    def commit(self, offsets: list[TopicPartition], *, asynchronous: bool = False) -> None:
        for consumer, tps in self._by_consumer(offsets):
            consumer.commit(offsets=tps, asynchronous=asynchronous)

    def pause(self, partitions: list[TopicPartition]) -> None:
        for consumer, tps in self._by_consumer(partitions):
            consumer.pause(tps)

    def resume(self, partitions: list[TopicPartition]) -> None:
        for consumer, tps in self._by_consumer(partitions):
            consumer.resume(tps)

    def seek(self, partition: TopicPartition) -> None:
        self.consumers[self.lane_of(partition.topic)].seek(partition)

    def close(self) -> None:
        """Leave every group at once (a rebalance does not wait for the session timeout)."""
        errors = []
        for consumer in self.consumers.values():
            try:
                consumer.close()
            except Exception as exc:  # close the others all the same
                errors.append(exc)
        if errors:
            raise errors[0]


def usable(message: Message) -> bool:
    """False for events that are not messages: partition EOF, and the errors librdkafka reports while
    it recovers by itself (brokers away, a topic not there yet), which are logged. A fatal error
    raises (the process dies, nothing committed)."""
    error = message.error()
    if error is None:
        return True
    if error.code() == KafkaError._PARTITION_EOF:
        return False
    if error.fatal() or error.code() == KafkaError._FATAL:  # the consumer is unusable from here on
        raise KafkaException(error)
    _log_consumer_error(error)
    return False


_last_logged: dict[int, float] = {}


def _log_consumer_error(error: KafkaError) -> None:
    """At most one line per error code and 10 s: a broker outage reports an error per poll."""
    now = time.monotonic()
    if now - _last_logged.get(error.code(), float("-inf")) >= 10.0:
        _last_logged[error.code()] = now
        log.warning("consumer error (the client retries by itself)", extra={"error": str(error)})
