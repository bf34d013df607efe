"""Where an ingest request's CPU work runs: a request whose events are all of bulk types on the process's
one bulk thread, at a lower CPU priority; any other on the priority threads. Why: `docs/architecture.md`,
"Ingest"."""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from django.conf import settings

from notifications.priority import Lane, lane_for, type_priority

log = logging.getLogger(__name__)


def request_lane(body: Any) -> Lane:
    """The lane of a parsed request body: bulk when every event names a type already known (cached,
    no query) to be bulk; priority for anything else, a body not yet valid included."""
    events = body.get("events") if isinstance(body, dict) and "events" in body else [body]
    if not isinstance(events, list) or not events:
        return Lane.PRIORITY
    for event in events:
        if not isinstance(event, dict):
            return Lane.PRIORITY
        priority = type_priority.cached(event.get("type"))
        if priority is None or lane_for(priority) is not Lane.BULK:
            return Lane.PRIORITY
    return Lane.BULK


def lower_thread_priority(increment: int) -> None:
    """Raise the calling thread's nice value by `increment` (Linux schedules threads, not processes):
    on a busy host the kernel runs the process's other threads, and the other processes, first."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
    except OSError as exc:
        log.warning("could not lower the thread's CPU priority", extra={"error": str(exc)})


class LaneExecutors:
    """The threads of each lane, made on first use: the priority lane uses the event loop's default
    executor (None); the bulk lane has one thread, so bulk requests take their turn one at a time and
    never hold every thread of the process."""

    def __init__(self) -> None:
        self._bulk: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def for_lane(self, lane: Lane) -> Executor | None:
        if lane is not Lane.BULK:
            return None
        with self._lock:
            if self._bulk is None:
                self._bulk = ThreadPoolExecutor(
                    max_workers=1,
                    thread_name_prefix="ingest-bulk",
                    initializer=lower_thread_priority,
                    initargs=(settings.INGEST_BULK_NICE,),
                )
            return self._bulk


executors = LaneExecutors()
