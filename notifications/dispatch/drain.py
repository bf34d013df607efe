"""Draining messages parked by a kill switch (`notif.<channel>.delayed`) back into their channel lane.

Runs as a bounded pass: it reads what is parked now, re-produces it, commits, and stops when it
reaches the end of every partition (or `limit`). It refuses while the channel's switch still says
delay or pause, or every enabled provider's does, since the messages would only be parked again; and
it starts only once every worker and dispatcher has seen the last switch change.
"""

import time
from dataclasses import dataclass

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from notifications.bus.config import consumer_config, producer_config
from notifications.bus.producing import AckedProducer
from notifications.bus.topics import channel_topic, delivery_topic
from notifications.dispatch.killswitch import REFRESH_SECONDS
from notifications.models import KillSwitch, KillSwitchMode, Provider
from notifications.priority import PriorityClass, lane_for, message_priority


class DrainRefused(Exception):
    """The channel (or every provider of it) is still switched to delay or pause."""


#: Every reader re-reads the switches within REFRESH_SECONDS; the margin covers a batch in hand.
SWITCH_SEEN_SECONDS = REFRESH_SECONDS + 0.5
_HOLDING = (KillSwitchMode.DELAY, KillSwitchMode.PAUSE)


@dataclass(frozen=True)
class DrainResult:
    channel: str
    moved: int


def drain_parked(*, channel: str, limit: int | None = None, idle_timeout: float = 3.0) -> DrainResult:
    _wait_until_switches_seen(channel)
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


def _wait_until_switches_seen(channel: str) -> None:
    """Refuse while the switches would park the messages again; else wait until a change made a
    moment ago is seen by every worker (a drained message must not meet a stale `pause`)."""
    switches = list(KillSwitch.objects.filter(channel=channel))
    for switch in switches:
        if switch.provider == "" and switch.mode in _HOLDING:
            raise DrainRefused(f"the {channel} kill switch is '{switch.mode}'; set it to normal before draining")
    held = {s.provider for s in switches if s.provider and s.mode in _HOLDING}
    enabled = set(Provider.objects.filter(channel=channel, enabled=True).values_list("name", flat=True))
    if held and enabled and enabled <= held:
        raise DrainRefused(
            f"every {channel} provider ({', '.join(sorted(enabled))}) is switched to delay or pause; "
            "set one to normal before draining"
        )
    if switches:
        changed = max(s.updated_at.timestamp() for s in switches)
        time.sleep(max(0.0, changed + SWITCH_SEEN_SECONDS - time.time()))


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
