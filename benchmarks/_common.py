"""Shared plumbing of the benchmark scripts: logging and CPU accounting from /proc (Linux only)."""

import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

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
    """The postmaster of `platform/services` and its children (backends, walwriter, autovacuum, ...)."""
    try:
        master = int((REPO / ".platform" / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return [master, *children_of(master)]


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
