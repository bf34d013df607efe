"""Spawn ``python -m provider_sandbox`` as a subprocess and read its ready line.

>>> with SandboxProcess(["--only", "sendgrid,smtp", "--sendgrid-port", "0", "--smtp-port", "0",
...                      "--smtp-control-port", "0"]) as sandbox:
...     sandbox.urls["sendgrid"], sandbox.ports["smtp"]
...     sandbox.client("smtp").stats()     # control API (smtp -> its smtp_control port)
"""

from __future__ import annotations

import collections
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from provider_sandbox.client import SandboxClient

REPO_ROOT = Path(__file__).resolve().parents[1]


class SandboxProcess:
    """A running sandbox subprocess; stops it with SIGTERM (then SIGKILL) on ``stop()``."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        python: str = sys.executable,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.args = list(args)
        self.python = python
        self.cwd = Path(cwd) if cwd else REPO_ROOT
        self.env = env
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}
        self.ports: dict[str, int] = {}
        self.urls: dict[str, str] = {}
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def start(self) -> SandboxProcess:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(  # noqa: S603 - runs this interpreter on the sandbox module, no outside input
            [self.python, "-m", "provider_sandbox", *self.args],
            cwd=self.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._pump_stdout, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=self._pump_stderr, args=(self.proc.stderr,), daemon=True).start()
        try:
            line = self._lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            self.stop()
            raise TimeoutError(f"sandbox did not report ready in {self.startup_timeout}s: {self.stderr()}") from None
        if line is None or line.get("event") != "listening":
            self.stop()
            raise RuntimeError(f"sandbox failed to start: {self.stderr()}")
        self.info, self.ports, self.urls = line, line["ports"], line["urls"]
        return self

    def _pump_stdout(self, stream: IO[str]) -> None:
        for raw in stream:
            try:
                self._lines.put(json.loads(raw))
            except ValueError:
                self.stderr_tail.append(raw.rstrip())
        self._lines.put(None)

    def _pump_stderr(self, stream: IO[str]) -> None:
        for raw in stream:
            self.stderr_tail.append(raw.rstrip())

    def next_event(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next JSON line printed after the ready line (e.g. ``{"event": "stopped"}``), or None at EOF."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def stderr(self) -> str:
        return "\n".join(self.stderr_tail)

    def url(self, provider: str) -> str:
        return self.urls[provider]

    def client(self, provider: str, **kwargs: Any) -> SandboxClient:
        """Control-API client for ``provider`` (the SMTP sandbox is controlled via ``smtp_control``)."""
        name = "smtp_control" if provider == "smtp" else provider
        return SandboxClient(self.urls[name], **kwargs)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
