"""The platform's roles as the Procfile runs them, one subprocess each, stopped, killed and restarted by the cases."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from pathlib import Path

import httpx

from tests.faults.services import REPO
from tests.role_processes import RoleProcesses

#: name -> command line after `python`, as the Procfile starts each role (two e-mail workers, so a
#: stopped one has a successor).
ROLES: dict[str, list[str]] = {
    "relay": ["manage.py", "relay_outbox", "--lane", "priority"],
    "relay_bulk": ["manage.py", "relay_outbox", "--lane", "bulk"],
    "dispatcher": ["manage.py", "run_consumer", "dispatcher", "--lane", "priority", "--instance", "0"],
    "dispatcher_bulk": ["manage.py", "run_consumer", "dispatcher", "--lane", "bulk", "--instance", "0"],
    "worker0": ["manage.py", "run_consumer", "worker-email", "--instance", "0"],
    "worker1": ["manage.py", "run_consumer", "worker-email", "--instance", "1"],
    "orchestrator": ["manage.py", "run_consumer", "campaign-orchestrator", "--instance", "0"],
    "expander": ["manage.py", "run_consumer", "campaign-expander", "--instance", "0"],
    "triage": ["manage.py", "run_consumer", "dlq-triage", "--instance", "0"],
}
CONSUMERS = [name for name in ROLES if not name.startswith("relay")]
ASSIGNED = b'"partitions assigned"'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pipeline(RoleProcesses):
    """The web process (uvicorn) and every role of `ROLES`, each logging to its own file in `logdir`;
    each role serves /metrics on a port of its own, so a case can read its counters."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        super().__init__({**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}, logdir)
        self.metrics_ports = {name: free_port() for name in ROLES}
        self.web_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.web_port}"
        self.restarts: dict[str, int] = dict.fromkeys(ROLES, 0)

    def _command(self, name: str) -> list[str]:
        if name == "web":
            return ["-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(self.web_port),
                    "--workers", "1", "--no-access-log", "--log-level", "warning"]  # fmt: skip
        return [*ROLES[name], "--metrics-port", str(self.metrics_ports[name])]

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.{self.restarts.get(name, 0)}.log"

    def start(self, name: str) -> None:
        self.spawn(name, self._command(name))

    def start_all(self) -> None:
        self.start("web")
        for name in ROLES:
            self.start(name)
        self.wait_ready()

    def wait_ready(self, names: list[str] | None = None, timeout: float = 120.0) -> None:
        """/readyz answers 200 and every consumer among `names` (default all) logged its assignment."""
        names = CONSUMERS if names is None else [n for n in names if n in CONSUMERS]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            with contextlib.suppress(httpx.HTTPError):
                web = httpx.get(self.base_url + "/readyz", timeout=5).status_code == 200
                if web and all(ASSIGNED in self.log_path(n).read_bytes() for n in names):
                    return
            time.sleep(0.5)
        raise AssertionError(f"the pipeline was not ready within {timeout:.0f} s (logs in {self.logdir})")

    def revive(self) -> list[str]:
        """Restart every process that exited (in an earlier case), so one case's casualty does not fail
        the cases after it; returns their names."""
        dead = [name for name, p in self.procs.items() if p.poll() is not None]
        for name in dead:
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self.start(name)
        if dead:
            self.wait_ready(dead)
        return dead

    def check(self) -> None:
        """Every process is running: none exited on its own."""
        dead = self.dead()
        assert not dead, f"process(es) exited: {dead}; {self.tails(list(dead))}"

    def tails(self, names: list[str], lines: int = 15) -> str:
        out = []
        for name in names:
            with contextlib.suppress(OSError):
                text = self.log_path(name).read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}\n" + "\n".join(text))
        return "\n".join(out)

    def kill(self, name: str) -> None:
        """SIGKILL `name` (no chance to finish or commit anything) and reap it."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, name: str) -> None:
        """Start `name` again after a kill, as a supervisor would (same instance name, a new log file)."""
        assert self.procs[name].poll() is not None, f"{name} is still running"
        self.restarts[name] += 1
        self.start(name)

    def pause(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGCONT)

    def metric(self, name: str, metric: str) -> float:
        """The sum of every sample of `metric` on role `name`'s /metrics (0 when it has none yet)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_ports[name]}/metrics", timeout=5).text
        pattern = re.compile(rf"^{re.escape(metric)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", re.MULTILINE)
        return sum(float(value) for value in pattern.findall(text))
