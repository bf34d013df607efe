"""Test helpers that read real Kafka topics."""

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Message
from django.conf import settings


def consume(topic: str, *, expected: int, timeout: float = 30.0, idle: float = 0.0) -> list[Message]:
    """Read `topic` from the beginning until `expected` messages arrived (then `idle` s more) or timeout."""
    return consume_matching(topic, lambda _m: True, expected=expected, timeout=timeout, idle=idle)


def consume_matching(
    topic: str, predicate, *, expected: int, timeout: float = 20.0, idle: float = 0.5
) -> list[Message]:
    """Like `consume`, but keeps only messages for which `predicate(message)` holds (shared topics)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
            "group.id": f"test-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    matched: list[Message] = []
    deadline = time.monotonic() + timeout
    idle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if len(matched) >= expected:
                idle_until = idle_until or time.monotonic() + idle
                if time.monotonic() >= idle_until:
                    break
            for msg in consumer.consume(num_messages=10_000, timeout=0.2):
                if msg.error() is not None:
                    # A topic created a moment ago may not be in every broker's metadata yet.
                    if msg.error().code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                        continue
                    raise RuntimeError(msg.error())
                if predicate(msg):
                    matched.append(msg)
    finally:
        consumer.close()
    return matched


def produce_raw(topic: str, items: list[tuple[str, bytes]]) -> None:
    """Produce (key, value) pairs and wait for the broker's acknowledgement."""
    from confluent_kafka import Producer

    from notifications.bus.config import producer_config

    producer = Producer(producer_config())
    for key, value in items:
        producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0
