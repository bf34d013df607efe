"""The platform's roles as subprocesses of this checkout, each logging to its own file: started, checked
and stopped the same way by the fault suite (`tests/faults/pipeline.py`) and the spike benchmark."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class RoleProcesses:
    """Named `python <args>` subprocesses run from the repository root with `env`, output in `logdir`."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def spawn(self, name: str, args: Sequence[str], *, nice: int = 0) -> None:
        """Start `python <args>` as `name`, at CPU priority `nice` (0: as this process)."""
        niced = ["nice", "-n", str(nice)] if nice else []
        with self.log_path(name).open("wb") as out:
            self.procs[name] = subprocess.Popen(
                [*niced, sys.executable, *args], cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def dead(self) -> dict[str, int]:
        """The processes that exited, with their exit codes."""
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def stop(self) -> dict[str, int | str]:
        """SIGTERM to every process (resumed first, if it was stopped); one that has not exited a
        minute later is killed. Returns each one's exit code, or "killed"."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | str] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                codes[name] = "killed"
        return codes
