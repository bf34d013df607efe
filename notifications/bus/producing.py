"""Producing to Kafka: the one produce-with-retry, and a batch whose every message must be acknowledged.

Every role that produces (relay, dispatcher, orchestrator, expander, workers) moves its cursor
(offsets, checkpoint, outbox rows) only after the broker acknowledged what it produced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Producer

from notifications.outages import KafkaUnavailable

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
    failed or is still unacknowledged, so the caller does not move its cursor on.

    A message the brokers failed for a reason a retry may cure (brokers away, timeouts) is kept and
    produced again by the next `flush`, which then raises `KafkaUnavailable` until it goes through:
    the caller may simply call `flush` again later. Any other failure raises RuntimeError."""

    def __init__(self, producer: Producer, role: str) -> None:
        self.producer = producer
        self.role = role
        self._failed: list[tuple[KafkaError, Any]] = []

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._failed.append((err, msg))

    def produce(self, topic: str, key: str | bytes | None, value: bytes, headers: Headers) -> None:
        produce_with_retry(
            self.producer, topic, value, key.encode() if isinstance(key, str) else key, headers, self._on_delivery
        )

    def flush(self, timeout: float = 60) -> None:
        """Wait for every acknowledgement; raise if a message failed or is still unacknowledged."""
        failed, self._failed = self._failed, []
        for _err, msg in failed:  # failed by an earlier flush: produced again
            produce_with_retry(self.producer, msg.topic(), msg.value(), msg.key(), msg.headers(), self._on_delivery)
        remaining = self.producer.flush(timeout)
        if not remaining and not self._failed:
            return
        errors = [err for err, _msg in self._failed]
        summary = f"{self.role} produce failed: {len(errors)} errors, {remaining} unacknowledged"
        if all(_retriable(err) for err in errors):
            # Unacknowledged ones are still in librdkafka's queue (it keeps retrying them itself).
            raise KafkaUnavailable(f"{summary} ({errors[0] if errors else 'timeout'})")
        raise RuntimeError(f"{summary}: {[e for e in errors if not _retriable(e)][:3]}")


def _retriable(error: KafkaError) -> bool:
    transient = (KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT)
    return not error.fatal() and (error.retriable() or error.code() in transient)
