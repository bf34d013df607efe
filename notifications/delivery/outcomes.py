"""How a delivery job ends — sent, parked in a retry tier, dead-lettered — and making that durable."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Message
from prometheus_client import Counter

from notifications.bus.dead_letters import dead_letter_headers
from notifications.bus.producing import AckedProducer
from notifications.bus.topics import RETRY_TIERS, channel_topic, delivery_topic
from notifications.delivery.jobs import Job, Unreadable
from notifications.delivery_log import LogEntry, log_day
from notifications.dispatch.messages import ChannelMessage, Header
from notifications.priority import lane_for, message_priority
from notifications.providers.results import SendResult

RETRIES = Counter("worker_retries_total", "Messages parked in a retry tier", ["channel", "tier"])
DLQ = Counter("worker_dlq_total", "Messages sent to the DLQ", ["channel", "error_class"])
RECIRCULATED = Counter(
    "worker_retry_recirculated_total", "Retry-tier messages parked again: due after their tier's delay", ["channel"]
)

#: Attempts kept in the `errors` header of a message parked in a retry tier.
RETRY_ERRORS_KEPT = 20

MetaOutcomes = list[tuple[str, str, dict]]


def carried_headers(job: Job) -> dict[str, str]:
    """What a job takes to its next attempt (a retry tier, the delayed topic): its key, attempt,
    origin, error history and the replay it belongs to."""
    headers = {
        Header.IDEMPOTENCY_KEY: job.key,
        Header.ATTEMPT: str(job.attempt),
        Header.ORIGIN_TOPIC: job.headers.get(Header.ORIGIN_TOPIC) or job.message.topic(),
        Header.ERRORS: orjson.dumps(job.errors[-RETRY_ERRORS_KEPT:]).decode(),
    }
    if job.headers.get(Header.REPLAY):
        headers[Header.REPLAY] = job.headers[Header.REPLAY]
    return headers


class Outcomes:
    """Produces a channel's retries and dead letters, records every job's decisions, and settles them:
    produces acknowledged, then the delivery log, the message producers' outcome hook and dead
    contact points written (only then may the jobs' offsets be committed)."""

    def __init__(
        self,
        *,
        channel: str,
        producer: AckedProducer,
        on_outcomes: Callable[[list[LogEntry]], None],
        on_invalid_contact: Callable[[ChannelMessage, SendResult], None],
        on_meta_outcomes: Callable[[MetaOutcomes], Any] = lambda _outcomes: None,
        tiers: tuple[tuple[str, float], ...] = RETRY_TIERS,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.channel = channel
        self.producer = producer
        self.on_outcomes = on_outcomes
        self.on_invalid_contact = on_invalid_contact
        self.on_meta_outcomes = on_meta_outcomes
        self.tiers = tiers
        self.now = wall_clock

    def park(self, job: Job, *, delay: float, error: dict | None = None) -> None:
        """Into the smallest retry tier of the message's own lane that covers `delay` (a bulk retry
        never waits in front of a transactional one), due at now + `delay`."""
        if error:
            job.errors.append({**error, "at": self.now()})
        tier, _seconds = next(((n, s) for n, s in self.tiers if s >= delay), self.tiers[-1])
        headers = {
            **carried_headers(job),
            Header.FIRST_ATTEMPT_AT: f"{job.first_attempt_at:.3f}",
            Header.NOT_BEFORE: f"{self.now() + max(delay, 0.0):.3f}",
        }
        topic = delivery_topic(self.channel, lane_for(message_priority(job.body)), tier)
        self.producer.produce(topic, job.message.key(), job.message.value() or b"", headers)
        RETRIES.labels(self.channel, tier).inc()
        self.record(job, "retrying", reason=(job.errors[-1].get("error_class", "") if job.errors else "in_flight"))

    def park_again(self, message: Message) -> None:
        """Back to the end of its own retry tier, headers unchanged: it is not due yet, and waiting
        at the head of the partition would hold up every message behind it."""
        self.producer.produce(message.topic(), message.key(), message.value() or b"", message.headers())
        RECIRCULATED.labels(self.channel).inc()

    def dead_letter(self, job: Job, *, error_class: str, message: str, provider: str) -> None:
        headers = dead_letter_headers(
            origin_topic=job.headers.get(Header.ORIGIN_TOPIC) or job.message.topic(),
            error_class=error_class,
            error=message,
            idempotency_key=job.key,
            attempt=job.attempt,
            first_attempt_at=job.first_attempt_at,
            errors=job.errors,
            provider=provider,
            replay=job.headers.get(Header.REPLAY),
        )
        self.producer.produce(
            channel_topic(self.channel, "dlq"), job.message.key(), job.message.value() or b"", headers
        )
        DLQ.labels(self.channel, error_class).inc()
        self.record(job, "dlq", reason=f"{error_class}: {message}"[:200], provider=provider)

    def dead_letter_unreadable(self, unreadable: Unreadable) -> None:
        message: Message = unreadable.message
        headers = {
            **unreadable.headers,
            **dead_letter_headers(
                origin_topic=unreadable.headers.get(Header.ORIGIN_TOPIC) or message.topic(),
                error_class=unreadable.error_class,
                error=unreadable.reason,
            ),
        }
        self.producer.produce(channel_topic(self.channel, "dlq"), message.key(), message.value() or b"", headers)
        DLQ.labels(self.channel, unreadable.error_class).inc()

    def record(
        self, job: Job, status: str, *, reason: str = "", provider: str = "", provider_message_id: str = ""
    ) -> None:
        """A decision about `job` for its delivery-log row (and its producer's outcome hook)."""
        body = job.body
        if body.get("meta"):
            job.meta_outcomes.append((job.key, status, body["meta"]))
        if not body.get("event_id") or body.get("user_id") is None:
            return
        job.entries.append(
            LogEntry(
                event_id=body["event_id"],
                user_id=int(body["user_id"]),
                channel=self.channel,
                type=body.get("type", ""),
                status=status,
                reason=reason,
                provider=provider,
                provider_message_id=provider_message_id or "",
                attempts=job.attempt,
                day=body.get("log_day") or log_day(body.get("created_at")),
            )
        )

    def settle(self, jobs: list[Job]) -> None:
        """Make the outcomes of finished jobs durable, outside the event loop: every retry and DLQ
        produce acknowledged (raises otherwise), then the delivery log, the outcome hook and dead
        contact points."""
        self.producer.flush()
        entries: list[LogEntry] = []
        meta_outcomes: MetaOutcomes = []
        for job in jobs:
            for body, result in job.invalid:
                self.on_invalid_contact(body, result)
            entries += job.entries
            meta_outcomes += job.meta_outcomes
        if entries:
            self.on_outcomes(entries)
        if meta_outcomes:
            self.on_meta_outcomes(meta_outcomes)


def error_entry(result: SendResult, provider: str, now: float) -> dict[str, Any]:
    """One attempt in a message's error history (the `errors` header)."""
    return {
        "at": round(now, 3),
        "provider": provider,
        "error_class": result.outcome.value,
        "status": result.status_code,
        "code": result.error_code,
        "message": (result.message or "")[:300],
    }
