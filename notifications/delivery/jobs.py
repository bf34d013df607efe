"""A polled channel message as a delivery job, and reading a polled batch into jobs."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from notifications.bus.runner import Deferrals
from notifications.bus.topics import tier_delay
from notifications.delivery_log import LogEntry
from notifications.dispatch.messages import ChannelMessage, Header, headers_dict
from notifications.providers.results import SendResult


@dataclass(eq=False)  # identity: jobs live in sets while they are being delivered
class Job:
    message: Message
    body: ChannelMessage
    headers: dict[str, str]
    attempt: int  # attempts already made
    first_attempt_at: float
    errors: list[dict[str, Any]] = field(default_factory=list)
    claimed: bool = False
    #: When the claim was asked for (time.monotonic()): the worker's liveness vouches for claims made
    #: since its keys have been alive without a gap.
    claimed_at: float | None = None
    #: Claimed blindly (Redis unusable beyond the hold): nothing to check in Redis before the send.
    fail_open: bool = False
    #: What settling this job writes (delivery log, the message's producer's outcomes, dead contact
    #: points); filled in the event loop, read by the thread that settles and commits once it is done.
    entries: list[LogEntry] = field(default_factory=list)
    #: (message id, status, meta) of a message that carries `meta` (a campaign's).
    meta_outcomes: list[tuple[str, str, dict]] = field(default_factory=list)
    invalid: list[tuple[ChannelMessage, SendResult]] = field(default_factory=list)
    #: Set when a stopping worker gave the job up before sending (claim released, offset not committed).
    abandoned: bool = False
    #: True while the provider call is under way (a job is only ever given up outside that).
    sending: bool = False
    task: asyncio.Task | None = None

    @property
    def partition(self) -> tuple[str, int]:
        return (self.message.topic(), self.message.partition())

    @property
    def key(self) -> str:
        return self.body["id"]


@dataclass(frozen=True)
class Unreadable:
    """A polled message that is no job: it goes to the DLQ with the reason."""

    message: Message
    headers: dict[str, str]
    error_class: str
    reason: str


@dataclass
class ReadBatch:
    """A polled batch as the worker takes it over."""

    jobs: list[Job] = field(default_factory=list)
    #: Retry-tier partitions whose head message is not due (it and every later message of its
    #: partition are held back): paused until the head is due, or its tier's delay has passed.
    deferrals: Deferrals = field(default_factory=dict)
    #: Not due yet, though they waited their tier's whole delay (a Retry-After longer than the
    #: tier): parked again at the end of their tier, so they never block the messages behind them.
    recirculate: list[Message] = field(default_factory=list)
    #: Body or headers malformed: never a reason to stop the worker (they go to the DLQ).
    unreadable: list[Unreadable] = field(default_factory=list)


#: A message due within this much of its tier's delay is waited for rather than parked again.
RECIRCULATE_MARGIN = 1.0


def read_batch(messages: list[Message], *, now: float, monotonic: Callable[[], float] = time.monotonic) -> ReadBatch:
    """The jobs of a polled batch, what is held back or parked again, and what cannot be read."""
    batch = ReadBatch()
    for message in messages:
        tp = (message.topic(), message.partition())
        if tp in batch.deferrals:
            continue  # a message before it in this partition is not due: keep order, hold back
        headers = headers_dict(message.headers())
        try:
            not_before = _not_before(headers)
            if not_before > now:
                wait = min(not_before, _tier_due(message)) - now
                if wait <= 0 and not_before - now > RECIRCULATE_MARGIN:
                    batch.recirculate.append(message)
                else:
                    wait = wait if wait > 0 else not_before - now
                    batch.deferrals[tp] = (message.offset(), monotonic() + wait)
                continue
            batch.jobs.append(_job(message, headers, now))
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            batch.unreadable.append(Unreadable(message, headers, "invalid_message", str(exc)))
    return batch


def _not_before(headers: dict[str, str]) -> float:
    """The `not-before` header as epoch seconds (0 without it); `inf` or `nan` is no time and would pause
    the partition for ever, so it is as unreadable as `abc`."""
    value = float(headers.get(Header.NOT_BEFORE) or 0)
    if not math.isfinite(value):
        raise ValueError(f"the {Header.NOT_BEFORE} header {value!r} is not a time")
    return value


def _tier_due(message: Message) -> float:
    """When `message` has waited its retry tier's delay (from the time it was parked); +inf when
    that cannot be told (not a tier topic, no timestamp)."""
    delay = tier_delay(message.topic())
    kind, millis = message.timestamp()
    if delay is None or kind == TIMESTAMP_NOT_AVAILABLE or millis <= 0:
        return float("inf")
    return millis / 1000 + delay


def _job(message: Message, headers: dict[str, str], now: float) -> Job:
    body = orjson.loads(message.value() or b"")
    if not isinstance(body, dict) or body.get("v") != 1 or not body.get("id"):
        raise ValueError("not a v1 channel message")
    errors = orjson.loads(headers[Header.ERRORS]) if headers.get(Header.ERRORS) else []
    if not isinstance(errors, list):
        raise ValueError(f"the {Header.ERRORS} header is not a list")
    return Job(
        message=message,
        body=body,
        headers=headers,
        attempt=int(headers.get(Header.ATTEMPT) or 0),
        first_attempt_at=float(headers.get(Header.FIRST_ATTEMPT_AT) or now),
        errors=errors,
    )
