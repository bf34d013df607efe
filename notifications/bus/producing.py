"""Producing to Kafka: the one produce-with-retry, and a batch whose every message must be acknowledged.

Every role that produces (relay, dispatcher, orchestrator, expander, workers) moves its cursor
(offsets, checkpoint, outbox rows) only after the broker acknowledged what it produced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Producer

Headers = dict[str, str] | list[tuple[str, Any]] | None


def produce_with_retry(
    producer: Producer,
    topic: str,
    value: bytes,
    key: bytes | None,
    headers: Headers,
    on_delivery: Callable[[KafkaError | None, Any], None] | None = None,
) -> None:
    """`producer.produce`, serving delivery reports while librdkafka's local queue is full
    (BufferError) instead of failing. A KafkaException (refused before queueing) propagates."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    while True:
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


class AckedProducer:
    """`produce` a batch, then `flush`: it waits for every acknowledgement and raises if a message
    failed or is still unacknowledged, so the caller crashes rather than move its cursor on."""

    def __init__(self, producer: Producer, role: str) -> None:
        self.producer = producer
        self.role = role
        self._errors: list[KafkaError] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._errors.append(err)

    def produce(self, topic: str, key: str | bytes | None, value: bytes, headers: Headers) -> None:
        produce_with_retry(
            self.producer, topic, value, key.encode() if isinstance(key, str) else key, headers, self._on_delivery
        )

    def flush(self, timeout: float = 60) -> None:
        """Wait for every acknowledgement; raise if a message failed or is still unacknowledged."""
        remaining = self.producer.flush(timeout)
        errors, self._errors = self._errors, []
        if remaining or errors:
            raise RuntimeError(f"{self.role} produce failed: {len(errors)} errors, {remaining} unacknowledged")
