"""Group commit: the concurrent ingest requests of one process share one transaction and one commit.

Each request hands its prepared events to the committer thread and waits; the thread stores
everything that arrived since its last commit in one transaction (two multi-row statements), commits,
and only then wakes the requests with their results. Nothing is answered 202 before its commit:
a process killed meanwhile answers nobody, and its transaction dies with its connection. Why:
`docs/architecture.md`, "Ingest".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime

from django.db import DatabaseError, close_old_connections, connection, connections, transaction
from django.db.utils import InterfaceError, OperationalError
from django.utils import timezone
from prometheus_client import Histogram

from notifications.outbox.services import PreparedEvent, PublishResult, store_events

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
    def __init__(self, *, store: Callable[..., list[PublishResult]] = store_events) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._queue: deque[tuple[list[PreparedEvent], Future]] = deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: Seconds the last commits took, smoothed (the overload guard reads it).
        self.commit_seconds = 0.0

    def submit(self, prepared: list[PreparedEvent], *, timeout: float = 30.0) -> list[PublishResult]:
        """Store `prepared` in the next group commit; returns once committed (DatabaseUnavailable
        otherwise). A caller already inside a transaction stores in it instead: its commit decides."""
        if connection.in_atomic_block:
            return store_events(prepared, now=timezone.now())
        return self.enqueue(prepared).result(timeout)

    def enqueue(self, prepared: list[PreparedEvent]) -> Future:
        """Queue `prepared` for the next group commit; the future holds its results once committed."""
        future: Future = Future()
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="ingest-group-commit", daemon=True)
                self._thread.start()
            self._queue.append((prepared, future))
            self._cond.notify()
        return future

    def close(self) -> None:
        """Stop the committer thread (after what is queued) and close its database connection."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(10)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    if not self._queue:
                        return
                    group = self._take_group()
                self._commit(group)
        finally:
            connections.close_all()

    def _take_group(self) -> list[tuple[list[PreparedEvent], Future]]:
        """Everything queued since the last commit, up to MAX_GROUP_EVENTS (at least one request)."""
        group, events = [], 0
        while self._queue and (not group or events + len(self._queue[0][0]) <= MAX_GROUP_EVENTS):
            item = self._queue.popleft()
            group.append(item)
            events += len(item[0])
        return group

    def _commit(self, group: list[tuple[list[PreparedEvent], Future]]) -> None:
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
        self.commit_seconds = 0.8 * self.commit_seconds + 0.2 * elapsed
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
