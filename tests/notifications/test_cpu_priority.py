"""Lowering a thread's CPU priority, and its PostgreSQL sessions following it on a local server."""

import os
import threading

import psycopg
import pytest
from django.db import connection

from notifications.cpu_priority import is_local, lower_thread_priority, share_cpu_priority
from notifications.outbox.relay import conninfo_from_django


def in_thread(work, *, nice: int):
    """`work()`'s result, run on a new thread (its own Django connection) lowered by `nice`."""
    out: dict = {}

    def run():
        lower_thread_priority(nice)
        try:
            out["value"] = work()
        except BaseException as exc:
            out["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if "error" in out:
        raise out["error"]
    return out["value"]


def session_nice() -> tuple[int, int]:
    """(this thread's session's backend pid, its nice value), read while the session is open."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    return pid, os.getpriority(os.PRIO_PROCESS, pid)


@pytest.mark.django_db(transaction=True)
def test_a_niced_threads_django_session_gets_its_nice_value():
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    _, nice = in_thread(session_nice, nice=4)
    assert nice == min(19, base + 4)


@pytest.mark.django_db(transaction=True)
def test_a_session_at_normal_priority_is_left_alone():
    _, nice = in_thread(session_nice, nice=0)
    assert nice == 0


@pytest.mark.django_db(transaction=True)
def test_nothing_is_reniced_with_the_setting_off(settings):
    settings.DATABASE_SESSIONS_FOLLOW_NICE = False
    _, nice = in_thread(session_nice, nice=4)
    assert nice == 0


@pytest.mark.django_db(transaction=True)
def test_a_remote_server_is_never_reniced():
    def remote():
        with psycopg.connect(conninfo_from_django()) as conn:
            changed = share_cpu_priority(conn.info.backend_pid, "db.internal.example")
            return changed, os.getpriority(os.PRIO_PROCESS, conn.info.backend_pid)

    assert in_thread(remote, nice=4) == (False, 0)


def test_a_pid_that_is_not_a_process_here_is_refused_quietly():
    assert in_thread(lambda: share_cpu_priority(2**22 + 1, "127.0.0.1"), nice=4) is False


@pytest.mark.parametrize(
    ("host", "local"),
    [("", True), ("localhost", True), ("127.0.0.1", True), ("::1", True), ("/var/run/postgresql", True),
     ("10.0.0.5", False), ("db.internal.example", False), (None, True)],
)  # fmt: skip
def test_which_hosts_are_this_machine(host, local):
    assert is_local(host) is local


def test_lowering_a_threads_priority_leaves_the_others_alone():
    seen = {}

    def lowered():
        lower_thread_priority(3)
        seen["lowered"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join(5)
    assert seen["lowered"] == min(19, base + 3)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
