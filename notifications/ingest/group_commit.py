"""Group commit: the concurrent ingest requests of one process share one transaction and one commit.

Each request hands its prepared events to its lane's committer thread and waits; the thread stores
everything that arrived since its last commit in one transaction, commits, and only then wakes the
requests with their results: nothing is answered 202 before its commit. Why: `docs/architecture.md`,
"Ingest".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, connections, transaction
from django.db.utils import InterfaceError, OperationalError
from django.utils import timezone
from prometheus_client import Histogram

from notifications.cpu_priority import lower_thread_priority
from notifications.outbox.services import PreparedEvent, PublishResult, store_events
from notifications.priority import Lane

log = logging.getLogger(__name__)

COMMIT_SECONDS = Histogram(
    "ingest_commit_seconds",
    "Time to store and commit one group of requests",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
GROUP_REQUESTS = Histogram(
    "ingest_group_requests", "Requests sharing one commit", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)

#: Events one transaction takes at most (a group is cut there; the rest commit next).
MAX_GROUP_EVENTS = 20_000


class DatabaseUnavailable(Exception):
    """The group could not be stored (the database is away or refused): answer 503, nothing kept."""


class GroupCommitter:
    """One committer thread per events lane: a request with an urgent or transactional event never
    waits for a group of bulk events to be written (`docs/architecture.md`, "Ingest")."""

    def __init__(self, *, store: Callable[..., list[PublishResult]] = store_events) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._queues: dict[Lane, deque[tuple[list[PreparedEvent], Future]]] = {lane: deque() for lane in Lane}
        self._threads: dict[Lane, threading.Thread] = {}
        self._stopping = False
        #: Seconds the last commits of each lane took, smoothed (the overload guard reads the larger).
        self._commit_seconds = dict.fromkeys(Lane, 0.0)

    @property
    def commit_seconds(self) -> float:
        return max(self._commit_seconds.values())

    def submit(self, prepared: list[PreparedEvent], *, timeout: float = 30.0) -> list[PublishResult]:
        """Store `prepared` in the next group commit; returns once committed (DatabaseUnavailable
        otherwise). A caller already inside a transaction stores in it instead: its commit decides."""
        if connection.in_atomic_block:
            return store_events(prepared, now=timezone.now())
        return self.enqueue(prepared).result(timeout)

    def enqueue(self, prepared: list[PreparedEvent]) -> Future:
        """Queue `prepared` for the next group commit of its lane (priority when any of its events is);
        the future holds its results once committed."""
        lane = Lane.BULK if prepared and all(event.lane is Lane.BULK for event in prepared) else Lane.PRIORITY
        future: Future = Future()
        with self._cond:
            thread = self._threads.get(lane)
            if thread is None or not thread.is_alive():
                self._stopping = False
                thread = threading.Thread(target=self._run, args=(lane,), name=f"ingest-commit-{lane}", daemon=True)
                self._threads[lane] = thread
                thread.start()
            self._queues[lane].append((prepared, future))
            self._cond.notify_all()
        return future

    def close(self) -> None:
        """Stop the committer threads (after what is queued) and close their database connections."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(10)

    def _run(self, lane: Lane) -> None:
        queue = self._queues[lane]
        if lane is Lane.BULK:
            lower_thread_priority(settings.INGEST_BULK_NICE)
        try:
            while True:
                with self._cond:
                    while not queue and not self._stopping:
                        self._cond.wait()
                    if not queue:
                        return
                    group = self._take_group(queue)
                self._commit(lane, group)
        finally:
            connections.close_all()

    @staticmethod
    def _take_group(queue: deque[tuple[list[PreparedEvent], Future]]) -> list[tuple[list[PreparedEvent], Future]]:
        """Everything queued since the last commit, up to MAX_GROUP_EVENTS (at least one request)."""
        group, events = [], 0
        while queue and (not group or events + len(queue[0][0]) <= MAX_GROUP_EVENTS):
            item = queue.popleft()
            group.append(item)
            events += len(item[0])
        return group

    def _commit(self, lane: Lane, group: list[tuple[list[PreparedEvent], Future]]) -> None:
        started = time.perf_counter()
        close_old_connections()
        try:
            results = self._store_group([prepared for prepared, _ in group])
        except (OperationalError, InterfaceError) as exc:
            connections["default"].close()  # reconnect on the next group
            self._fail(group, exc)
            return
        except DatabaseError:
            # Something of one request the database refused: store each alone, so only it fails.
            for item in group:
                self._commit_alone(item)
            return
        except BaseException as exc:  # a bug: every waiting request fails with it
            self._fail(group, exc)
            raise
        elapsed = time.perf_counter() - started
        self._commit_seconds[lane] = 0.8 * self._commit_seconds[lane] + 0.2 * elapsed
        COMMIT_SECONDS.observe(elapsed)
        GROUP_REQUESTS.observe(len(group))
        for (_, future), result in zip(group, results, strict=True):
            future.set_result(result)

    def _store_group(self, requests: Sequence[list[PreparedEvent]]) -> list[list[PublishResult]]:
        now: datetime = timezone.now()
        flat = [event for prepared in requests for event in prepared]
        with transaction.atomic():
            results = self._store(flat, now=now)
        out, start = [], 0
        for prepared in requests:
            out.append(results[start : start + len(prepared)])
            start += len(prepared)
        return out

    def _commit_alone(self, item: tuple[list[PreparedEvent], Future]) -> None:
        prepared, future = item
        try:
            [result] = self._store_group([prepared])
        except DatabaseError as exc:
            log.warning("ingest request not stored", extra={"error": str(exc)[:300]})
            future.set_exception(DatabaseUnavailable(str(exc)))
            return
        future.set_result(result)

    @staticmethod
    def _fail(group: list[tuple[list[PreparedEvent], Future]], exc: BaseException) -> None:
        log.warning("ingest group not stored", extra={"requests": len(group), "error": str(exc)[:300]})
        for _, future in group:
            if not future.done():
                future.set_exception(DatabaseUnavailable(str(exc)))


committer = GroupCommitter()
