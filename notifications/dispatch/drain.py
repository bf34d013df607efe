"""Draining messages parked by a kill switch (`notif.<channel>.delayed`) back into their channel lane.

Runs as a bounded pass: it reads what is parked now, re-produces it, commits, and stops when it
reaches the end of every partition (or `limit`). It refuses while the channel's switch still says
delay or pause, since the messages would only be parked again.
"""

import time
from dataclasses import dataclass

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from notifications.bus.config import consumer_config, producer_config
from notifications.bus.producing import AckedProducer
from notifications.bus.topics import channel_topic, delivery_topic
from notifications.models import KillSwitch, KillSwitchMode
from notifications.priority import PriorityClass, lane_for, message_priority


class DrainRefused(Exception):
    """The channel is still switched to delay or pause."""


@dataclass(frozen=True)
class DrainResult:
    channel: str
    moved: int


def drain_parked(*, channel: str, limit: int | None = None, idle_timeout: float = 3.0) -> DrainResult:
    switch = KillSwitch.objects.filter(channel=channel, provider="").first()
    if switch is not None and switch.mode in (KillSwitchMode.DELAY, KillSwitchMode.PAUSE):
        raise DrainRefused(f"the {channel} kill switch is '{switch.mode}'; set it to normal before draining")
    source = channel_topic(channel, "delayed")
    consumer = Consumer(consumer_config(f"drain.{channel}", **{"enable.partition.eof": True}))
    producer = AckedProducer(Producer(producer_config()), f"drain-{channel}")
    moved = 0
    eof: set[int] = set()
    assigned: list[TopicPartition] = []
    consumer.subscribe([source], on_assign=lambda c, parts: assigned.extend(parts))
    deadline = time.monotonic() + idle_timeout
    try:
        while limit is None or moved < limit:
            batch = consumer.consume(500, 0.5)
            if not batch:
                if (assigned and len(eof) >= len(assigned)) or time.monotonic() > deadline:
                    break
                continue
            deadline = time.monotonic() + idle_timeout
            done = []
            for message in batch:
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(message.partition())
                        continue
                    raise RuntimeError(message.error())
                eof.discard(message.partition())
                topic = delivery_topic(channel, lane_for(_priority_of(message.value())))
                producer.produce(topic, message.key(), message.value() or b"", message.headers())
                done.append(message)
            producer.flush(30)  # raises unless every message was acknowledged
            if done:
                consumer.commit(asynchronous=False, offsets=_next_offsets(done))
                moved += len(done)
    finally:
        consumer.close()
    return DrainResult(channel=channel, moved=moved)


def _priority_of(value: bytes | None) -> PriorityClass:
    """The parked message's class; what cannot be read goes to the priority lane (its worker
    dead-letters it at once rather than leaving it behind a bulk backlog)."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return PriorityClass.TRANSACTIONAL
    return message_priority(body) if isinstance(body, dict) else PriorityClass.TRANSACTIONAL


def _next_offsets(messages) -> list[TopicPartition]:
    highest: dict[tuple[str, int], int] = {}
    for m in messages:
        highest[(m.topic(), m.partition())] = max(highest.get((m.topic(), m.partition()), -1), m.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]
