"""The channel worker's loop: the next batch is polled while the sends of the last are in flight.

Finished jobs are settled (produces acknowledged, delivery log written) every `settle_interval`, and
each partition is committed below its first unfinished message (`OffsetTracker`). The bulk lane is
polled only for the bulk credit left. Nothing new is polled while the worker holds its messages for
Redis. How and why: `docs/architecture.md`, "Delivery" (worker loop) and "Priority lanes".
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from django.db import close_old_connections, connections
from prometheus_client import Gauge

from notifications.bus.runner import BATCH_SECONDS, CONSUMED, ConsumerRunner, RunnerConfig
from notifications.delivery.worker import ChannelWorker, Job
from notifications.priority import Lane

log = logging.getLogger(__name__)

IN_FLIGHT = Gauge("worker_jobs_in_flight", "Jobs handed to the event loop and not finished", ["role", "lane"])

TP = tuple[str, int]


class OffsetTracker:
    """Per partition: the offsets handed out, in order, and which of them are done.

    `committable()` returns, per partition, the offset after the longest done prefix (what may be
    committed) when it moved since the last call.
    """

    def __init__(self) -> None:
        self._pending: dict[TP, deque[int]] = {}
        self._done: dict[TP, set[int]] = {}
        self._next: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}

    def add(self, tp: TP, offset: int) -> None:
        self._pending.setdefault(tp, deque()).append(offset)
        self._done.setdefault(tp, set())

    def done(self, tp: TP, offset: int) -> None:
        if tp in self._done:
            self._done[tp].add(offset)

    def pending(self, tps: set[TP] | None = None) -> int:
        return sum(len(q) for tp, q in self._pending.items() if tps is None or tp in tps)

    def committable(self, tps: set[TP] | None = None) -> list[TopicPartition]:
        out = []
        for tp, offsets in self._pending.items():
            if tps is not None and tp not in tps:
                continue
            done = self._done[tp]
            while offsets and offsets[0] in done:
                done.discard(offsets[0])
                self._next[tp] = offsets.popleft() + 1
            nxt = self._next.get(tp)
            if nxt is not None and nxt != self._committed.get(tp):
                out.append(TopicPartition(tp[0], tp[1], nxt))
        return out

    def committed(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def forget(self, tp: TP) -> None:
        for table in (self._pending, self._done, self._next, self._committed):
            table.pop(tp, None)


class PipelinedWorkerRunner(ConsumerRunner):
    """`ConsumerRunner` whose handler is a channel worker running on its own event loop: the next
    batch is polled while the sends of the last are in flight (see the module docstring)."""

    def __init__(
        self,
        config: RunnerConfig,
        worker: ChannelWorker,
        *,
        stop_event: threading.Event | None = None,
        max_in_flight: int | None = None,
        bulk_limit: Callable[[], int] | None = None,
        settle_interval: float = 0.1,
        stop_timeout: float = 60.0,
    ) -> None:
        """`bulk_limit()`: how many bulk-lane jobs may be in flight now (default: half the concurrency)."""
        super().__init__(config, worker, stop_event=stop_event)
        self.worker = worker
        self.max_in_flight = max_in_flight or (worker.config.concurrency + config.batch_size)
        self.bulk_limit = bulk_limit or (lambda: max(1, worker.config.concurrency // 2))
        self.settle_interval = settle_interval
        self.stop_timeout = stop_timeout
        self.tracker = OffsetTracker()
        self._in_flight: dict[TP, int] = {}
        self._lane_in_flight = {Lane.PRIORITY: 0, Lane.BULK: 0}
        self._finished: list[Job] = []
        self._futures: list[Future] = []
        self._loop_thread: threading.Thread | None = None
        self._last_settle = time.monotonic()

    # -- rebalances (inside consume(), on this thread) --------------------------------------------------
    def assigned_partitions(self, partitions: list[TopicPartition]) -> None:
        self.worker.loop.call_soon_threadsafe(self.worker.reinstate, {(tp.topic, tp.partition) for tp in partitions})

    def revoked_partitions(self, partitions: set[TP]) -> None:
        if partitions:
            # Jobs of these partitions still waiting for a slot or a token are given up (claims
            # released, offsets not committed: the next owner sends them); only sends already under
            # way are waited for, so the rebalance is not held up by a backlog behind a rate limit.
            self.worker.loop.call_soon_threadsafe(self.worker.revoke, partitions)
        deadline = time.monotonic() + self.stop_timeout
        while any(self._in_flight.get(tp) for tp in partitions) and time.monotonic() < deadline:
            self._collect(timeout=0.05)
        try:
            self._settle_and_commit(only=partitions)
        except KafkaException as exc:  # partitions already lost (session expired): the next owner redoes them
            log.warning("commit on revocation failed", extra={"role": self.config.role, "error": str(exc)})
        for tp in partitions:
            self.tracker.forget(tp)

    # -- the loop -----------------------------------------------------------------------------------------
    def started(self) -> None:
        # Liveness keys before the first claim: a claim whose owner has none may be taken over at once.
        self.worker.liveness.refresh()
        loop = self.worker.loop
        self._loop_thread = threading.Thread(target=loop.run_forever, name=f"{self.config.role}-loop", daemon=True)
        self._loop_thread.start()
        loop.call_soon_threadsafe(self.worker.start_background)

    def step(self) -> None:
        self._collect(timeout=0)
        if self.outage.active:
            # A dependency was away: take nothing new until settling (and the provider table) work.
            self._settle_and_commit()
            self.worker.refresh_providers()
            return
        if self.worker.hold.holding:
            # Redis is away for a moment: the messages in hand wait for it; take nothing new (the
            # consumer keeps its group: the hold's bound is far below max.poll.interval.ms).
            self._collect(timeout=0.05)
            if time.monotonic() - self._last_settle >= self.settle_interval:
                self._settle_and_commit()
            return
        self._take_next()
        if time.monotonic() - self._last_settle >= self.settle_interval:
            self._settle_and_commit()

    def finish(self) -> None:
        """Stop: no new tokens are taken; wait for sends in progress, then settle and commit."""
        self.worker.loop.call_soon_threadsafe(self.worker.stop_sending)
        deadline = time.monotonic() + self.stop_timeout
        while sum(self._in_flight.values()) > 0 and time.monotonic() < deadline:
            self._collect(timeout=0.05)
        self._settle_and_commit()

    def close_handler(self) -> None:
        self._stop_loop()

    def ride_out(self, dependency: str, exc: Exception) -> None:
        """Settling failed: the finished jobs are kept, sends under way go on finishing, nothing new
        is taken; the settle is tried again after a capped, jittered wait."""
        self._rewind()  # only a batch not yet started, if any
        connections.close_all()
        deadline = time.monotonic() + self.outage.failed(dependency, exc)
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            self._collect(timeout=min(0.05, max(0.0, deadline - time.monotonic())))

    def _take_next(self) -> None:
        """Take the next messages by strict priority: what the priority lane has waiting whenever a
        useful amount fits; else what the bulk lane has, for the bulk credit left only; else wait
        briefly for the first priority message."""
        in_flight = sum(self._in_flight.values())
        room = self.max_in_flight - in_flight
        if in_flight and room < min(max(1, self.config.batch_size // 2), self.max_in_flight):
            self._collect(timeout=0.02)  # full: wait for jobs to finish
            return
        size = min(self.config.batch_size, room)
        batch = self.consumer.consume(Lane.PRIORITY, size, 0)
        if not batch and Lane.BULK in self.consumer.lanes:
            limit, bulk_in_flight = self.bulk_limit(), self._lane_in_flight[Lane.BULK]
            bulk_room = min(room, limit - bulk_in_flight)
            # In chunks of a quarter of the credit (not one message per loop), or any when idle.
            if bulk_room >= max(1, limit // 4) or (bulk_room > 0 and not bulk_in_flight):
                batch = self.consumer.consume(Lane.BULK, min(self.config.batch_size, bulk_room), 0)
            elif self.consumer.overdue(Lane.BULK):
                # No credit for a long time (a provider on hold): one message keeps the group membership.
                batch = self.consumer.consume(Lane.BULK, 1, 0)
        if not batch:
            batch = self.consumer.consume(Lane.PRIORITY, size, self.config.poll_timeout if in_flight == 0 else 0.02)
        self._start(batch)

    def _start(self, batch: list[Message]) -> None:
        if not batch:
            return
        started = time.perf_counter()
        # Database reads, on this thread (not the event loop); before anything is tracked, so a
        # failure here (the database away at start-up) leaves the batch to be read again.
        self._in_hand = batch
        self.worker.refresh_providers()
        self._in_hand = []
        jobs, deferrals, raw = self.worker.prepare(batch)
        if deferrals:
            self._pause(deferrals)
        for job in jobs:
            tp = (job.message.topic(), job.message.partition())
            self.tracker.add(tp, job.message.offset())
            self._in_flight[tp] = self._in_flight.get(tp, 0) + 1
            self._lane_in_flight[self.consumer.lane_of(tp[0])] += 1
        for message in raw:  # dead-lettered or parked again: durable once the producer is flushed
            tp = (message.topic(), message.partition())
            self.tracker.add(tp, message.offset())
            self.tracker.done(tp, message.offset())
        if jobs:
            self._futures.append(self.worker.submit(jobs))
        self._report_in_flight()
        BATCH_SECONDS.labels(self.config.role).observe(time.perf_counter() - started)

    def _report_in_flight(self) -> None:
        for lane, n in self._lane_in_flight.items():
            IN_FLIGHT.labels(self.config.role, lane).set(n)

    def _collect(self, timeout: float) -> None:
        """Take finished jobs off the worker's queue (waiting up to `timeout` for the first)."""
        self._check_futures()
        done = self.worker.done
        try:
            job = done.get(timeout=timeout) if timeout > 0 else done.get_nowait()
        except queue.Empty:
            return
        while True:
            self._finished.append(job)
            tp = (job.message.topic(), job.message.partition())
            self._in_flight[tp] = self._in_flight.get(tp, 1) - 1
            self._lane_in_flight[self.consumer.lane_of(tp[0])] -= 1
            try:
                job = done.get_nowait()
            except queue.Empty:
                break

    def _check_futures(self) -> None:
        if not self._futures:
            return
        running = []
        for future in self._futures:
            if future.done():
                future.result()  # re-raises a bug from the event loop: die without committing
            else:
                running.append(future)
        self._futures = running

    def _settle_and_commit(self, only: set[TP] | None = None) -> None:
        self._last_settle = time.monotonic()
        finished, self._finished = self._finished, []
        close_old_connections()  # the settle writes: notice a connection that dropped meanwhile
        try:
            self.worker.settle(finished)  # produces acknowledged, delivery log written
        except BaseException:
            self._finished = finished + self._finished  # settled again on the next try
            raise
        if finished:
            for job in finished:
                if not job.abandoned:
                    self.tracker.done((job.message.topic(), job.message.partition()), job.message.offset())
            CONSUMED.labels(self.config.role).inc(sum(1 for j in finished if not j.abandoned))
        offsets = self.tracker.committable(only)
        if offsets:
            try:
                self.consumer.commit(offsets, asynchronous=False)
            except KafkaException as exc:
                code = exc.args[0].code()
                if code in _REBALANCING:
                    # A rebalance is under way (more workers joining): the outcomes are durable, the
                    # commit is retried at the next settle, or by the revocation callback.
                    log.info("commit deferred by a rebalance", extra={"role": self.config.role, "error": str(exc)})
                    return
                if code != KafkaError._NO_OFFSET:
                    raise
            self.tracker.committed(offsets)
        self._report_in_flight()

    def _stop_loop(self) -> None:
        loop = self.worker.loop
        if self._loop_thread is None or not loop.is_running():
            return

        async def close_adapters() -> None:
            from notifications.providers.registry import close_adapters as close

            await self.worker.close_background()
            await close()

        try:
            asyncio.run_coroutine_threadsafe(close_adapters(), loop).result(5)
        except Exception:
            log.debug("closing provider adapters failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        self._loop_thread.join(5)


_REBALANCING = {
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._STATE,
}
