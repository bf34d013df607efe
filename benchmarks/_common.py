"""Shared plumbing of the benchmark scripts: logging, CPU accounting from /proc (Linux only), the
bench database and its run lock, loopback guard, quiet-machine wait, clean-up helpers."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    """Progress goes to stderr; the results table goes to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _stat_fields(pid: int) -> list[str]:
    # Fields after the "(comm)"; index 1 is ppid, 11/12 are utime/stime.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime+stime clock ticks of each live pid (whole process, all threads)."""
    ticks = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def children_of(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat_fields(int(entry.name))[1]) == parent:
                    pids.append(int(entry.name))
    return pids


def postgres_pids() -> list[int]:
    """The postmaster of `platform/services` and its children (backends, walwriter, autovacuum, ...). In a
    checkout without `.platform/` (a git worktree), the parent of a backend of the configured database."""
    try:
        master = int((REPO / ".platform" / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        master = _local_postmaster()
        if master is None:
            return []
    return [master, *children_of(master)]


_POSTMASTER: list[int] = []


def _local_postmaster() -> int | None:
    """The postmaster's pid, as the parent of one backend (a loopback server on this machine only)."""
    if not _POSTMASTER:
        import psycopg

        from notifications.outbox.relay import conninfo_from_django

        with contextlib.suppress(Exception), psycopg.connect(conninfo_from_django(), autocommit=True) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            _POSTMASTER.append(int(_stat_fields(backend)[1]))
    return _POSTMASTER[0] if _POSTMASTER else None


def kafka_pids() -> list[int]:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return [int((REPO / ".platform" / "run" / "kafka.pid").read_text().split()[0])]
    return []


def system_busy_seconds() -> float:
    """CPU-seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by named groups of processes between start() and stop().

    Groups are callables returning pids, re-evaluated at stop() so processes forked meanwhile (a new
    PostgreSQL backend, a gunicorn worker) count from zero; a process that exited meanwhile is lost.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.used: dict[str, float] = {}
        self.wall = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._before = {name: cpu_ticks(get()) for name, get in self.groups.items()}
        self._busy = system_busy_seconds()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._t0
        tick = os.sysconf("SC_CLK_TCK")
        for name, get in self.groups.items():
            before = self._before.get(name, {})
            self.used[name] = sum(t - before.get(pid, 0) for pid, t in cpu_ticks(get()).items()) / tick
        # Whatever else ran meanwhile (other people's jobs on a shared machine, the kernel, ...).
        self.used["other processes"] = max(0.0, system_busy_seconds() - self._busy - sum(self.used.values()))

    def summary(self) -> str:
        parts = [f"{name} {sec:.1f}s ({sec / self.wall * 100:.0f}%)" for name, sec in self.used.items()]
        total = sum(self.used.values()) / self.wall * 100
        return (
            ", ".join(parts)
            + f"; machine busy {total:.0f}% of {100 * (os.cpu_count() or 1)}% [wall {self.wall:.1f}s; 100% = one core]"
        )

    @property
    def other_share(self) -> float:
        """Fraction of one core used by processes outside the measured groups."""
        return self.used.get("other processes", 0.0) / self.wall if self.wall else 0.0


# --- shared by the benchmark scripts -----------------------------------------------------------------
def redis_server_pids(ports: list[int]) -> list[int]:
    """redis-server processes listening on `ports` (their process title is `redis-server 127.0.0.1:<port>`)."""
    wanted = {f"127.0.0.1:{port}" for port in ports}
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().split()
                if len(title) >= 2 and title[0].endswith("redis-server") and title[1] in wanted:
                    pids.append(int(entry.name))
    return pids


def redis_ports(url: str) -> list[int]:
    """The ports of every Redis server behind `url`: one, or every node of a cluster (replicas too)."""
    from notifications.redis_connect import is_cluster_url, redis_from_url

    if not is_cluster_url(url):
        return [urlsplit(url).port or 6379]
    client = redis_from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0, retries=1, health_check_interval=0)
    try:
        return sorted(node.port for node in client.get_nodes())
    finally:
        client.close()


def redis_pids() -> list[int]:
    """The Redis servers of REDIS_URL (a cluster's nodes too), else the pid file of `platform/services`."""
    from django.conf import settings

    with contextlib.suppress(Exception):
        pids = redis_server_pids(redis_ports(settings.REDIS_URL))
        if pids:
            return pids
    with contextlib.suppress(OSError, ValueError, IndexError):
        return [int((REPO / ".platform" / "run" / "redis.pid").read_text().split()[0])]
    return []


def delete_redis_prefix(client, pattern: str) -> int:
    deleted, chunk = 0, []
    for key in client.scan_iter(match=pattern, count=10_000):
        chunk.append(key)
        if len(chunk) >= 5000:
            deleted += client.delete(*chunk)
            chunk = []
    if chunk:
        deleted += client.delete(*chunk)
    return deleted


def code_version() -> str:
    """The commit measured, and whether the platform's code differed from it (other work in progress)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "notifications", "preferences", "config", "campaigns"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
    except OSError:
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip() and line[3:].endswith(".py")]
    return head.strip() + (
        f" + uncommitted changes in {len(changed)} file(s): {', '.join(changed[:6])}" if changed else ""
    )


def require_loopback() -> None:
    """Every service this benchmark talks to must be on this machine (it sends real traffic)."""
    from django.conf import settings

    from notifications.redis_connect import is_cluster_url, parse_cluster_url

    redis_hosts = (
        [node.host for node in parse_cluster_url(settings.REDIS_URL)[0]]
        if is_cluster_url(settings.REDIS_URL)
        else [urlsplit(settings.REDIS_URL).hostname or "127.0.0.1"]
    )
    hosts = {
        "database": settings.DATABASES["default"].get("HOST") or "127.0.0.1",
        **{f"redis {i}": host for i, host in enumerate(redis_hosts)},
        **{f"kafka {i}": server.rsplit(":", 1)[0].strip("[]") for i, server in
           enumerate(settings.KAFKA_BOOTSTRAP_SERVERS.split(","))},
    }  # fmt: skip
    remote = {name: host for name, host in hosts.items() if host not in ("127.0.0.1", "localhost", "::1")}
    if remote:
        raise SystemExit(f"refusing to run: not on 127.0.0.1: {remote}")


#: First key of the benchmarks' advisory locks (the platform's own: 7301-7302 the relays' buckets per
#: lane, 7310 the delivery-log maintenance); the second names the lock.
BENCH_LOCK_CLASS = 7320


def hold_run_lock(lock_id: int, what: str, max_wait: float = 1800.0):
    """One run of this benchmark at a time on the bench database (they share rows such as the Provider or the
    notification type). Returns the connection that holds the session lock: keep it open for the whole run."""
    import psycopg

    from notifications.outbox.relay import conninfo_from_django

    conn = psycopg.connect(conninfo_from_django(), autocommit=True)
    deadline, logged = time.monotonic() + max_wait, 0.0
    while not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (BENCH_LOCK_CLASS, lock_id)).fetchone()[0]:
        if time.monotonic() > deadline:
            raise SystemExit(f"another {what} run still holds the bench lock after {max_wait:.0f}s")
        if time.monotonic() - logged > 30:
            logged = time.monotonic()
            log(f"another {what} run is using the bench database; waiting for it to finish ...")
        time.sleep(2.0)
    return conn


def exit_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the clean-up in `finally` blocks still runs."""

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def require_migrated() -> None:
    """Exit with one line when the configured database lacks migrations (a fresh machine before `make migrate`)."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        raise SystemExit(f"database {connection.settings_dict['NAME']!r} has unapplied migrations: run `make migrate`")


def migrate_bench_database() -> None:
    """`migrate` on the bench database, serialised against other benchmark runs doing the same."""
    import psycopg
    from django.core.management import call_command

    from notifications.outbox.relay import conninfo_from_django

    with psycopg.connect(conninfo_from_django(), autocommit=True) as lock_conn:
        lock_conn.execute("SELECT pg_advisory_lock(%s, 1)", (BENCH_LOCK_CLASS,))
        try:
            call_command("migrate", interactive=False, verbosity=0)
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s, 1)", (BENCH_LOCK_CLASS,))


def wait_for_quiet_machine(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait s) until the other processes leave the machine mostly idle; returns the busy share
    (0..1 of all cores) last seen. Other people's jobs on a shared box skew every figure here."""
    cores = os.cpu_count() or 1
    deadline = time.monotonic() + max_wait
    quiet, logged = 0, 0.0
    while True:
        before = system_busy_seconds()
        time.sleep(2.0)
        busy = (system_busy_seconds() - before) / 2.0 / cores
        quiet = quiet + 1 if busy <= threshold else 0
        if quiet >= 3 or time.monotonic() >= deadline:  # quiet for 6 s in a row, or out of patience
            return busy
        if busy > threshold and time.monotonic() - logged > 30:
            logged = time.monotonic()
            log(f"machine {busy * 100:.0f}% busy with other work; waiting for it to quieten down ...")
