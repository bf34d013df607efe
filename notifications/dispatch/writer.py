"""Database work on a thread of its own, so a batch's PostgreSQL round trips overlap its other work.

The thread keeps one connection of its own (Django connections are per thread); :meth:`BackgroundWriter.close`
closes it. The dispatcher stores a batch's decisions on one and reads contact points on another
(docs/architecture.md, "Dispatcher").
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.db import close_old_connections, connections

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    def __init__(self, name: str = "db-writer") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on the writer thread, after the writes submitted before it."""
        if self._closed:
            raise RuntimeError("writer is closed")
        return self._executor.submit(self._run, fn, *args)

    @staticmethod
    def _run(fn: Callable[..., Any], *args: Any) -> Any:
        close_old_connections()  # notice a connection PostgreSQL dropped since the last batch
        return fn(*args)

    def close(self) -> None:
        """Wait for pending writes, close the thread's database connection, stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._executor.submit(connections.close_all).result()
        self._executor.shutdown(wait=True)
