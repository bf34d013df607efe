"""Producing a batch's messages and waiting until every one is acknowledged.

The dispatcher, the campaign orchestrator and the batch expander all produce a batch, flush, and
move their cursor (offsets, checkpoint) only when the broker acknowledged everything. This is that
loop once: `produce` retries while librdkafka's local queue is full (serving delivery reports in
between), `flush` waits and raises if anything failed, so the caller crashes rather than move on.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, Producer


class AckedProducer:
    def __init__(self, producer: Producer, role: str) -> None:
        self.producer = producer
        self.role = role
        self._errors: list[KafkaError] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._errors.append(err)

    def produce(self, topic: str, key: str, value: bytes, headers: dict[str, str]) -> None:
        while True:
            try:
                self.producer.produce(
                    topic, value=value, key=key.encode(), headers=list(headers.items()), on_delivery=self._on_delivery
                )
                return
            except BufferError:
                self.producer.poll(0.05)

    def flush(self, timeout: float = 60) -> None:
        """Wait for every acknowledgement; raise if a message failed or is still unacknowledged."""
        remaining = self.producer.flush(timeout)
        errors, self._errors = self._errors, []
        if remaining or errors:
            raise RuntimeError(f"{self.role} produce failed: {len(errors)} errors, {remaining} unacknowledged")
