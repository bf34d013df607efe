"""The bulk lane's ingest requests, served by a process of the web process's own at a lower CPU
priority: admission, the commit and the 202. Why a process and not a thread: `docs/architecture.md`,
"Ingest" (admission by lane).

Nothing here imports Django's models at module level: the child imports this module before its
initializer has set Django up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any

log = logging.getLogger(__name__)


def serve_bulk(body: bytes, authorization: str, x_api_key: str | None):
    """In the child: the whole request (admit, group commit, 202), as the WSGI view serves it, and
    what it added to the ingest's counters (the parent's /metrics shows them)."""
    from notifications.ingest.views import admit_and_commit, parse_body

    before = _counter_values()
    answer = admit_and_commit(parse_body(body), authorization=authorization, x_api_key=x_api_key)
    after = _counter_values()
    return answer, [(key, value - before.get(key, 0.0)) for key, value in after.items() if value > before.get(key, 0.0)]


def _counters() -> dict[str, Any]:
    from notifications.ingest.quotas import THROTTLED
    from notifications.ingest.views import EVENTS

    return {"ingest_events": EVENTS, "ingest_quota_refused": THROTTLED}


def _counter_values() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for name, counter in _counters().items():
        for metric in counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    values[(name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _add_to_counters(increments) -> None:
    counters = _counters()
    for (name, labels), amount in increments:
        counters[name].labels(**dict(labels)).inc(amount)


def _start_child(databases: dict[str, Any], nice: int) -> None:
    """The child's initializer: its CPU priority lowered first (Django's start-up included; its threads
    inherit it), then Django set up on the parent's databases (a test run's included)."""
    from notifications.cpu_priority import lower_thread_priority

    lower_thread_priority(nice)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django
    from django.conf import settings

    settings.DATABASES.update(databases)  # before the connections are made from it
    django.setup()
    from notifications.ingest import views  # noqa: F401  (imported now, not by the first request)
    from notifications.process import freeze_startup_heap

    freeze_startup_heap()


class BulkIngestProcess:
    """The child process: started with the web process (`start`) or by the first bulk request, and
    started again if it dies. Its commit histograms stay in its own registry; its counters reach
    the parent's with each answer."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> ProcessPoolExecutor:
        from django.conf import settings

        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=get_context("spawn"),
                    initializer=_start_child,
                    initargs=({"default": dict(settings.DATABASES["default"])}, settings.INGEST_BULK_NICE),
                )
            return self._pool

    def start(self) -> None:
        """Start the child now (a web process's start-up) rather than on the first bulk request."""
        self.executor().submit(os.getpid)

    async def serve(self, body: bytes, authorization: str, x_api_key: str | None):
        """The request's Answer. A child that died before it took the request is replaced and the
        request handed to the new one; one that died while serving it answers 503 (nothing was
        stored, or it was and a retry with the same event ids is a duplicate)."""
        from notifications.ingest.views import UNAVAILABLE

        for _ in range(2):
            pool = self.executor()
            try:
                future = pool.submit(serve_bulk, body, authorization, x_api_key)
            except BrokenProcessPool:
                self._discard(pool)
                continue
            try:
                answer, increments = await asyncio.wrap_future(future)
            except BrokenProcessPool:
                self._discard(pool)
                return UNAVAILABLE
            _add_to_counters(increments)
            return answer
        return UNAVAILABLE

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        log.warning("the bulk ingest process died; starting another")
        with self._lock:
            if self._pool is pool:
                self._pool = None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


bulk_process = BulkIngestProcess()
