"""Riding out a dependency outage: which errors mean "PostgreSQL, Redis or Kafka is away for a while",
and the capped, jittered wait before trying again.

A long-running role that meets one of these errors does not exit: it keeps what it has not made
durable, waits (`Outage.wait`), reconnects and carries on where it was. Why: `docs/architecture.md`,
"Failure handling".
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import psycopg
import redis
from confluent_kafka import KafkaError, KafkaException
from django.db import InterfaceError, OperationalError
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

OUTAGES = Counter(
    "dependency_outages_total", "Times a role found a dependency away and waited for it", ["role", "dependency"]
)
DOWN = Gauge("dependency_down", "1 while a role is waiting for a dependency to come back", ["role"])

#: The first wait after an outage is noticed, and the longest one (full jitter below the cap).
FIRST_WAIT = 0.2
MAX_WAIT = 5.0


class KafkaUnavailable(Exception):
    """A produce or commit the brokers did not acknowledge; retrying later may succeed."""


def dependency_of(exc: BaseException) -> str | None:
    """'postgresql', 'redis' or 'kafka' when `exc` says that dependency is (temporarily) away; None
    for anything else (a bug, a refused statement), which must not be retried blindly."""
    if isinstance(exc, OperationalError | InterfaceError | psycopg.OperationalError | psycopg.InterfaceError):
        return "postgresql"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError) or _is_cluster_down(exc):
        return "redis"
    if isinstance(exc, KafkaUnavailable):
        return "kafka"
    if isinstance(exc, KafkaException):
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and not error.fatal() and (error.retriable() or error.code() in _TRANSIENT):
            return "kafka"
    cause = exc.__cause__ or exc.__context__
    return dependency_of(cause) if cause is not None and cause is not exc else None


def _is_cluster_down(exc: BaseException) -> bool:
    from redis.exceptions import ClusterDownError, MasterDownError, TryAgainError

    return isinstance(exc, ClusterDownError | MasterDownError | TryAgainError)


_TRANSIENT = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    # A commit while the group coordinator is away (its broker restarting): "Waiting for coordinator".
    KafkaError._WAIT_COORD,
}


class Outage:
    """One role's view of its dependencies: while `wait` is called after each failure the waits grow
    (full jitter, capped at MAX_WAIT); `recovered` after a success resets them and logs the end."""

    def __init__(
        self,
        role: str,
        *,
        first_wait: float = FIRST_WAIT,
        max_wait: float = MAX_WAIT,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.role = role
        self.first_wait = first_wait
        self.max_wait = max_wait
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._clock = clock
        self.failures = 0
        self.since: float | None = None
        self.dependency: str | None = None

    @property
    def active(self) -> bool:
        return self.failures > 0

    def next_wait(self) -> float:
        ceiling = min(self.max_wait, self.first_wait * 2 ** min(self.failures, 30))
        return self._rng.uniform(ceiling / 2, ceiling)

    def failed(self, dependency: str, exc: BaseException) -> float:
        """Record a failure; returns how long to wait before the next try."""
        if not self.failures:
            self.since = self._clock()
            self.dependency = dependency
            OUTAGES.labels(self.role, dependency).inc()
            DOWN.labels(self.role).set(1)
            log.warning(
                "dependency unavailable, waiting for it",
                extra={"role": self.role, "dependency": dependency, "error": f"{type(exc).__name__}: {exc}"[:300]},
            )
        wait = self.next_wait()
        self.failures += 1
        return wait

    def wait(self, dependency: str, exc: BaseException, stop_event: threading.Event) -> None:
        """`failed`, then sleep the wait (returns early when `stop_event` is set)."""
        stop_event.wait(self.failed(dependency, exc))

    def recovered(self) -> None:
        if not self.failures:
            return
        log.warning(
            "dependency back",
            extra={
                "role": self.role,
                "dependency": self.dependency,
                "down_seconds": round(self._clock() - (self.since or self._clock()), 3),
                "attempts": self.failures,
            },
        )
        self.failures = 0
        self.since = None
        self.dependency = None
        DOWN.labels(self.role).set(0)
