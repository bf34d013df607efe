"""A polled channel message as a delivery job, and reading a polled batch into jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Message

from notifications.bus.runner import Deferrals
from notifications.delivery_log import LogEntry
from notifications.dispatch.messages import ChannelMessage, Header, headers_dict
from notifications.providers.base import SendResult


@dataclass(eq=False)  # identity: jobs live in sets while they are being delivered
class Job:
    message: Message
    body: ChannelMessage
    headers: dict[str, str]
    attempt: int  # attempts already made
    first_attempt_at: float
    errors: list[dict[str, Any]] = field(default_factory=list)
    claimed: bool = False
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


def read_batch(
    messages: list[Message], *, now: float, monotonic: Callable[[], float] = time.monotonic
) -> tuple[list[Job], Deferrals, list[Unreadable]]:
    """The jobs of a polled batch, the deferrals (retry-tier partitions whose head message is not due:
    it and every later message of its partition are left out) and the messages that cannot be read
    (body or headers malformed: never a reason to stop the worker)."""
    deferrals: Deferrals = {}
    jobs: list[Job] = []
    unreadable: list[Unreadable] = []
    for message in messages:
        tp = (message.topic(), message.partition())
        if tp in deferrals:
            continue  # a message before it in this partition is not due: keep order, hold back
        headers = headers_dict(message.headers())
        try:
            not_before = float(headers.get(Header.NOT_BEFORE) or 0)
            if not_before > now:
                deferrals[tp] = (message.offset(), monotonic() + (not_before - now))
                continue
            jobs.append(_job(message, headers, now))
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            unreadable.append(Unreadable(message, headers, "invalid_message", str(exc)))
    return jobs, deferrals, unreadable


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
