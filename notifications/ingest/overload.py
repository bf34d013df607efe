"""Shedding load at the front door before latency explodes: 503 + Retry-After while the database is the
limit (commits slow down) or the pipeline behind it is (the outbox's oldest row grows old)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError, connection

from notifications.models import OutboxEvent

#: How often the outbox's oldest row is looked at (one index probe), per process.
SAMPLE_SECONDS = 1.0


class OverloadGuard:
    def __init__(self, *, commit_seconds: Callable[[], float], clock: Callable[[], float] = time.monotonic) -> None:
        self._commit_seconds = commit_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._sampled_at = float("-inf")
        self._outbox_age = 0.0

    def reason(self) -> str | None:
        """Why new work must be refused now, or None."""
        commit = self._commit_seconds()
        if commit > settings.INGEST_MAX_COMMIT_SECONDS:
            return f"commits take {commit:.2f} s (limit {settings.INGEST_MAX_COMMIT_SECONDS:g} s)"
        age = self.outbox_age()
        if age > settings.INGEST_MAX_OUTBOX_AGE:
            return f"the oldest unrelayed event is {age:.0f} s old (limit {settings.INGEST_MAX_OUTBOX_AGE:g} s)"
        return None

    def outbox_age(self) -> float:
        """Seconds the oldest outbox row has waited, sampled at most every SAMPLE_SECONDS."""
        now = self._clock()
        if now - self._sampled_at < SAMPLE_SECONDS or not self._lock.acquire(blocking=False):
            return self._outbox_age
        try:
            self._sampled_at = now
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT extract(epoch FROM now() - created_at) FROM {OutboxEvent._meta.db_table} "  # noqa: S608
                    "ORDER BY id LIMIT 1"
                )
                row = cursor.fetchone()
            self._outbox_age = float(row[0]) if row else 0.0
        except DatabaseError:
            pass  # the database being away is the request's own 503; keep the last sample
        finally:
            self._lock.release()
        return self._outbox_age
