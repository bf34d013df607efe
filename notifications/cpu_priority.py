"""CPU priority of the bulk lane's threads, and of their database sessions: a session opened by a
thread running at a lower priority (a bulk lane's relay, dispatcher or ingest process) gets that
priority for its server process too, when PostgreSQL runs on this host as a user allowed to renice
it. Why: `docs/architecture.md`, "Ingest". Nothing here needs Django set up.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "::1"})


def thread_nice() -> int:
    """The calling thread's nice value (Linux schedules threads; a process's is its main thread's)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def lower_thread_priority(increment: int) -> None:
    """Raise the calling thread's nice value by `increment` (Linux schedules threads, not processes):
    on a busy host the kernel runs the process's other threads, and the other processes, first.
    Threads it starts afterwards inherit the value."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, thread_nice() + increment))
    except OSError as exc:
        log.warning("could not lower the thread's CPU priority", extra={"error": str(exc)})


def is_local(host: str | None) -> bool:
    """Whether a database host names this machine: loopback, or a Unix socket directory."""
    host = host or ""
    return host in _LOCAL_HOSTS or host.startswith("/")


def share_cpu_priority(backend_pid: int, host: str | None) -> bool:
    """Raise the nice value of the session's server process `backend_pid` to the calling thread's.
    True when it was changed; nothing is done for a remote server, at normal priority, or when it is
    not ours to renice (another user's server: the session just keeps its priority)."""
    nice = thread_nice()
    if nice <= 0 or not settings.DATABASE_SESSIONS_FOLLOW_NICE or not is_local(host):
        return False
    try:
        if os.getpriority(os.PRIO_PROCESS, backend_pid) >= nice:
            return False
        os.setpriority(os.PRIO_PROCESS, backend_pid, nice)
    except OSError as exc:  # not ours (EPERM/EACCES), or not on this host after all (ESRCH)
        log.debug("database session keeps its CPU priority", extra={"pid": backend_pid, "error": str(exc)})
        return False
    return True


def on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    """`connection_created` receiver: a Django session of a lowered thread gets its priority."""
    if connection.vendor != "postgresql" or thread_nice() <= 0:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    share_cpu_priority(pid, connection.settings_dict.get("HOST"))
