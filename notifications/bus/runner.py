"""The one consumer loop every role runs on: poll a batch, hand it over, commit only when durable.

A role is a `BatchHandler`: it receives a polled batch and returns only after every message has a
durable outcome; only then are the offsets committed, so a crash leads to redelivery, never loss.
SIGTERM sets a flag the loop checks between batches. When PostgreSQL, Redis or Kafka is away
(`notifications.outages`), the loop rewinds to the first message not committed, waits with capped,
jittered backoff and tries again: the process rides the outage out. Other exceptions propagate: the
process dies with nothing committed and its supervisor restarts it. A role with a bulk lane is served by strict
priority. The channel workers' pipelined mode extends this loop (`delivery/pipeline.py`). Why, in
`docs/architecture.md`: "Kafka", "Priority lanes".
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from django.db import close_old_connections, connections
from prometheus_client import Counter, Histogram

from notifications.bus.lanes import LanedConsumer
from notifications.outages import Outage, dependency_of
from notifications.priority import Lane
from notifications.probes import HEARTBEAT

log = logging.getLogger(__name__)

CONSUMED = Counter("consumer_messages_total", "Messages handled and committed", ["role"])
FENCED = Counter("consumer_fenced_total", "Times this role's consumer was fenced and joined again", ["role"])
#: A fencing this long after the previous one starts the pause sequence again at 1 s.
FENCING_MEMORY_SECONDS = 300.0
BATCH_SECONDS = Histogram(
    "consumer_batch_seconds",
    "Time to handle one polled batch",
    ["role"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

#: A handler may hold back part of a batch: {(topic, partition): (first offset not handled, due
#: time in time.monotonic())}. The runner commits only what came before, rewinds the partition to
#: that offset and pauses it until it is due (retry tiers never sleep in the consumer).
Deferrals = dict[tuple[str, int], tuple[int, float]]


class BatchHandler(Protocol):
    """Also optional: ``tick()`` (called between polls) and ``close()`` (called once on stop).

    ``handle_batch`` may instead return a :class:`~concurrent.futures.Future` when the last part of
    the batch's work continues in the background: the runner then hands over the next batch at once
    and commits this one only when the future has succeeded (in batch order, at most
    :data:`MAX_PENDING` batches behind; before any partition is revoked)."""

    def handle_batch(self, messages: list[Message]) -> Deferrals | Future | None: ...


#: Batches whose background completion may still be running while the next one is handled.
MAX_PENDING = 1
#: With a bulk lane, how long a poll of an idle priority lane may block before the bulk lane is
#: looked at (the latency of bulk on an idle role; priority messages end the wait at once).
IDLE_PRIORITY_WAIT = 0.1


@dataclass
class RunnerConfig:
    role: str
    topics: Sequence[str]
    group: str
    #: The role's bulk lane (consumer group `<group>.bulk`); empty: one lane.
    bulk_topics: Sequence[str] = ()
    batch_size: int = 500
    #: A bulk batch's size (default: batch_size): what a priority message may have to wait for.
    bulk_batch_size: int | None = None
    poll_timeout: float = 0.5
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    #: Commit offsets without waiting for the broker's answer (still only after the batch is durable).
    #: A lost commit only means redelivery, which downstream dedup absorbs; a revocation and the stop
    #: commit synchronously, so a clean hand-over or shutdown never re-delivers.
    async_commit: bool = False


def fenced(exc: BaseException) -> bool:
    """True when `exc` is a fatal consumer error: a static member fenced by another with its instance
    id (librdkafka reports it as FENCED_INSTANCE_ID, or on the message stream as _FATAL)."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(error, KafkaError) and error.code() in (KafkaError.FENCED_INSTANCE_ID, KafkaError._FATAL)


#: Commit errors that mean this member no longer owns the partitions (the group moved on without it).
_MEMBERSHIP_LOST = (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS)


def membership_lost(exc: BaseException) -> bool:
    """True when a commit failed because the group no longer counts this member in (after a broker or
    coordinator failover): the offsets cannot be committed by us any more, the next owner re-reads."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(error, KafkaError) and error.code() in _MEMBERSHIP_LOST


class ConsumerRunner:
    def __init__(
        self,
        config: RunnerConfig,
        handler: Any,
        *,
        stop_event: threading.Event | None = None,
        on_assign: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.stop_event = stop_event or threading.Event()
        self.assigned = threading.Event()  # set once every lane's consumer holds its assignment
        self._on_assign_cb = on_assign
        overrides = dict(config.consumer_overrides)
        if config.async_commit:
            overrides.setdefault("on_commit", self._on_commit)
        self._overrides = overrides
        self.consumer = self._new_consumer()
        self._fenced_times = 0
        self._fenced_at = float("-inf")
        self._assigned_lanes: set[Lane] = set()
        self._last_async: list[TopicPartition] = []
        self._paused: dict[tuple[str, int], float] = {}
        self._pending: deque[tuple[Future, list[Message], float]] = deque()
        self._in_hand: list[Message] = []  # the batch being handled, until it is committed or pending
        self.outage = Outage(config.role)

    def _new_consumer(self) -> LanedConsumer:
        return LanedConsumer(
            self.config.group, {Lane.PRIORITY: self.config.topics, Lane.BULK: self.config.bulk_topics}, self._overrides
        )

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        role = self.config.role
        self.consumer.subscribe(on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("consumer started", extra={"role": role, "topics": [*self.config.topics, *self.config.bulk_topics]})
        try:
            self.started()
            while not self.stop_event.is_set():
                self._turn()
            self.finish()
        finally:
            try:
                self.consumer.close()  # leaves the group at once, so a rebalance does not wait
            finally:
                self.close_handler()
                connections.close_all()  # this thread's database connections (roles run in threads in tests)
                log.info("consumer stopped", extra={"role": role})

    def _turn(self) -> None:
        HEARTBEAT.beat()  # /healthz: the loop is turning
        try:
            self._tick()
            self._resume_due()
            self.step()
        except Exception as exc:
            if self.stop_event.is_set() and isinstance(exc, CancelledError):
                # Stopping cancelled work this turn was waiting for: nothing of it is committed (it is
                # read again), so end the turn and let run() finish.
                log.info("turn interrupted by the stop", extra={"role": self.config.role})
                return
            if fenced(exc):
                self.rejoin(exc)
                return
            dependency = dependency_of(exc)
            if dependency is None:
                raise
            self.ride_out(dependency, exc)
        else:
            self.outage.recovered()

    def ride_out(self, dependency: str, exc: Exception) -> None:
        """A dependency went away mid-turn: give up what is not committed (it is read again), drop
        the database connections, wait (capped, jittered backoff), and let the loop try again."""
        self._rewind()
        connections.close_all()
        reset = getattr(self.handler, "reset", None)
        if reset is not None:
            reset()  # the handler's own connections and half-done state
        self.outage.wait(dependency, exc, self.stop_event)

    def rejoin(self, exc: Exception) -> None:
        """The broker fenced this static member (another join with its `group.instance.id` won: after
        a coordinator moved, the client's own abandoned rejoin can be that other join). The consumer is
        unusable (a fatal error): give every partition up as a rebalance would, then join again with a
        new consumer after a growing pause (1 s, doubling, at most 30 s), so two processes wrongly
        sharing an instance id alternate slowly instead of fencing each other in a tight loop."""
        now = time.monotonic()
        if now - self._fenced_at > FENCING_MEMORY_SECONDS:
            self._fenced_times = 0
        self._fenced_at = now
        self._fenced_times += 1
        delay = min(30.0, 2.0 ** (self._fenced_times - 1))
        FENCED.labels(self.config.role).inc()
        log.error(
            "consumer fenced by another member with the same group.instance.id; joining again",
            extra={"role": self.config.role, "error": str(exc), "after_seconds": delay},
        )
        owned: set[tuple[str, int]] = set()
        for consumer in self.consumer.consumers.values():
            try:
                owned |= {(tp.topic, tp.partition) for tp in consumer.assignment()}
            except Exception:
                log.debug("assignment of a fenced consumer unreadable", exc_info=True)
        try:
            self.revoked_partitions(owned)
        except Exception:  # its commits fail on a fenced consumer: the next owner reads them again
            log.warning("partitions given up without commit after fencing", exc_info=True)
        self._pending.clear()
        self._in_hand = []
        self._paused.clear()
        self._assigned_lanes.clear()
        self.assigned.clear()
        try:
            self.consumer.close()
        except Exception:
            log.debug("closing the fenced consumer failed", exc_info=True)
        if self.stop_event.wait(delay):
            self.consumer = self._new_consumer()  # run()'s finally closes it
            return
        self.consumer = self._new_consumer()
        self.consumer.subscribe(on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _rewind(self) -> None:
        """Seek every partition with messages handed over but not committed back to the first of them."""
        first: dict[tuple[str, int], int] = {}
        batches = [batch for _future, batch, _started in self._pending] + [self._in_hand]
        for future, _batch, _started in self._pending:
            try:
                future.exception(timeout=30)  # let background work finish before its batch is re-read
            except Exception:
                log.debug("background completion did not finish", exc_info=True)
        self._pending.clear()
        self._in_hand = []
        for batch in batches:
            for m in batch:
                tp = (m.topic(), m.partition())
                first[tp] = min(first.get(tp, m.offset()), m.offset())
        for (topic, partition), offset in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except Exception:  # revoked meanwhile: its next owner starts at the committed offset
                log.debug("rewind of %s[%d] failed", topic, partition, exc_info=True)

    def started(self) -> None:
        """Called once the consumers are subscribed, before the first poll."""

    def step(self) -> None:
        """One turn of the loop: the next batch handed over, its offsets committed when durable."""
        batch = self._poll()
        if not batch:
            self._settle(keep=0)  # idle: commit what finished in the background
            return
        started = time.perf_counter()
        close_old_connections()  # notice a database connection that dropped since the last batch
        self._in_hand = batch
        result = self.handler.handle_batch(batch)
        if isinstance(result, Future):
            self._pending.append((result, batch, started))
            self._in_hand = []
            self._settle(keep=MAX_PENDING)
            return
        self._settle(keep=0)  # commits stay in batch order
        deferrals = result or {}
        if deferrals:
            batch = [m for m in batch if not _held_back(m, deferrals)]
            self._pause(deferrals)
        if batch:
            self.commit(batch)
        self._in_hand = []
        BATCH_SECONDS.labels(self.config.role).observe(time.perf_counter() - started)
        CONSUMED.labels(self.config.role).inc(len(batch))

    def finish(self) -> None:
        """After the stop flag: commit what is durable."""
        self._settle(keep=0, final=True)

    def close_handler(self) -> None:
        close = getattr(self.handler, "close", None)
        if close is not None:
            close()  # the handler's own resources (threads, connections)

    def _tick(self) -> None:
        tick = getattr(self.handler, "tick", None)
        if tick is not None:
            close_old_connections()
            tick()  # periodic work of the role (e.g. releasing due messages)

    def _poll(self) -> list[Message]:
        """The next batch by strict priority: what the priority lane has waiting; else what the bulk
        lane has; else the first priority message within the poll timeout (bulk then waits a
        moment). A bulk lane not polled for long (a steady priority stream) is polled anyway: it must
        not leave its group."""
        size, timeout = self.config.batch_size, self.config.poll_timeout
        bulk_size = self.config.bulk_batch_size or size
        if Lane.BULK not in self.consumer.lanes:
            return self.consumer.consume(Lane.PRIORITY, size, timeout)
        if Lane.PRIORITY not in self.consumer.lanes:  # a process of the bulk lane alone
            return self.consumer.consume(Lane.BULK, bulk_size, timeout)
        if self.consumer.overdue(Lane.BULK):
            return self.consumer.consume(Lane.BULK, bulk_size, 0)
        return (
            self.consumer.consume(Lane.PRIORITY, size, 0)
            or self.consumer.consume(Lane.BULK, bulk_size, 0)
            or self.consumer.consume(Lane.PRIORITY, size, min(timeout, IDLE_PRIORITY_WAIT))
        )

    # -- rebalances ---------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lane = self.consumer.lane_of_consumer(consumer)
        log.info("partitions assigned", extra={"role": self.config.role, "lane": lane, "count": len(partitions)})
        self.assigned_partitions(partitions)
        self._assigned_lanes.add(lane)
        if self._assigned_lanes >= set(self.consumer.lanes):
            self.assigned.set()
        if self._on_assign_cb:
            self._on_assign_cb(partitions)

    def assigned_partitions(self, partitions: list[TopicPartition]) -> None:
        """Hook: partitions (re)assigned to this member."""

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions revoked", extra={"role": self.config.role, "count": len(partitions)})
        self.revoked_partitions({(tp.topic, tp.partition) for tp in partitions})
        for tp in partitions:
            self._paused.pop((tp.topic, tp.partition), None)

    def revoked_partitions(self, partitions: set[tuple[str, int]]) -> None:
        """Hook: commit what is durable of `partitions` while they are still ours. Handling is
        synchronous here, so only background completions can be in flight: settle them now. A commit
        that fails because Kafka is away (the coordinator's broker restarting) or the group no longer
        counts us in is given up: the next owner reads those messages again, which the next stage's
        dedup absorbs; raising here would stop the process from inside the rebalance callback."""
        try:
            self._settle(keep=0, final=True)
        except Exception as exc:
            if dependency_of(exc) != "kafka" and not membership_lost(exc):
                raise
            log.warning(
                "offsets not committed on revocation (redelivered)", extra={"role": self.config.role, "error": str(exc)}
            )

    # -- committing ---------------------------------------------------------------------------------
    def _settle(self, *, keep: int, final: bool = False) -> None:
        """Commit the pending batches whose completion succeeded, oldest first, waiting for the
        oldest ones until at most ``keep`` remain. A failed completion raises: nothing after it is
        committed and the process dies, as when ``handle_batch`` raises. ``final`` (revocation,
        stop): commit synchronously, including an asynchronous commit that may still be in flight."""
        while self._pending and (len(self._pending) > keep or self._pending[0][0].done()):
            future, batch, started = self._pending[0]
            future.result()
            self._pending.popleft()
            self.commit(batch, sync=final)
            BATCH_SECONDS.labels(self.config.role).observe(time.perf_counter() - started)
            CONSUMED.labels(self.config.role).inc(len(batch))
        if final and self._last_async:
            self.consumer.commit(self._last_async, asynchronous=False)
            self._last_async = []

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            log.warning("offset commit failed (the batch will be redelivered)", extra={"error": str(err)})

    def commit(self, batch: list[Message], *, sync: bool = False) -> None:
        highest: dict[tuple[str, int], int] = {}
        for m in batch:
            tp = (m.topic(), m.partition())
            highest[tp] = max(highest.get(tp, -1), m.offset())
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]
        asynchronous = self.config.async_commit and not sync
        self.consumer.commit(offsets, asynchronous=asynchronous)
        if asynchronous:
            # Remember the newest offset per partition, re-committed synchronously when final.
            latest = {(tp.topic, tp.partition): tp for tp in self._last_async}
            latest.update({(tp.topic, tp.partition): tp for tp in offsets})
            self._last_async = list(latest.values())
        else:
            done = {(tp.topic, tp.partition) for tp in offsets}
            self._last_async = [tp for tp in self._last_async if (tp.topic, tp.partition) not in done]

    # -- held-back partitions -------------------------------------------------------------------------
    def _pause(self, deferrals: Deferrals) -> None:
        for (topic, partition), (offset, due) in deferrals.items():
            tp = TopicPartition(topic, partition, offset)
            self.consumer.pause([tp])
            self.consumer.seek(tp)  # the held-back message is read again when the partition resumes
            self._paused[(topic, partition)] = due

    def _resume_due(self) -> None:
        if not self._paused:
            return
        now = time.monotonic()
        due = [key for key, at in self._paused.items() if at <= now]
        if due:
            self.consumer.resume([TopicPartition(t, p) for t, p in due])
            for key in due:
                del self._paused[key]

    @property
    def paused_partitions(self) -> dict[tuple[str, int], float]:
        return dict(self._paused)


def _held_back(message: Message, deferrals: Deferrals) -> bool:
    deferral = deferrals.get((message.topic(), message.partition()))
    return deferral is not None and message.offset() >= deferral[0]
