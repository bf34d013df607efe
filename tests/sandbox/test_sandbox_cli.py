"""The ``python -m provider_sandbox`` entry point, its flags, shutdown, and the in-process runner."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from provider_sandbox.client import SandboxClient
from provider_sandbox.config import DEFAULT_PORTS, SandboxConfig
from provider_sandbox.platform_env import read_env_file
from provider_sandbox.process import REPO_ROOT, SandboxProcess
from provider_sandbox.server import BackgroundSandbox, build_parser, config_from_args

pytestmark: list[pytest.MarkDecorator] = []


def test_only_and_rate_flags_then_graceful_sigterm() -> None:
    proc = SandboxProcess(
        [
            "--only",
            "sendgrid,twilio",
            "--sendgrid-rate",
            "500",
            "--sendgrid-port",
            "0",
            "--twilio-port",
            "0",
            "--twilio-latency",
            "uniform:1:3",
        ]
    ).start()
    try:
        assert set(proc.ports) == {"sendgrid", "twilio"}
        assert proc.urls["sendgrid"] == f"http://127.0.0.1:{proc.ports['sendgrid']}"
        with SandboxClient(proc.urls["sendgrid"]) as sendgrid, SandboxClient(proc.urls["twilio"]) as twilio:
            assert sendgrid.config()["rate"] == 500
            assert twilio.config()["latency"] == {"kind": "uniform", "min_ms": 1.0, "max_ms": 3.0}
            # an open keep-alive connection must not block shutdown
            sendgrid.health()
            assert proc.stop() == 0
        assert proc.next_event() == {"event": "stopped", "pid": proc.info["pid"]}
    finally:
        proc.stop()


def test_busy_port_exits_with_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "provider_sandbox", "--only", "webhook", "--webhook-port", str(port)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    assert result.returncode == 1
    assert "sandbox failed to start" in result.stderr
    assert result.stdout == ""


def test_bad_flags_are_rejected() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "provider_sandbox", "--only", "pigeon"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown providers" in result.stderr


def test_config_file_and_provider_flags(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.json"
    path.write_text(
        json.dumps(
            {
                "max_records": 10,
                "providers": {
                    "fcm": {"port": 0, "rate": 100, "errors": {"transient": 0.1}},
                    "webhook": {"port": 0},
                    "twilio": {"port": 0},
                },
            }
        )
    )
    args = build_parser().parse_args(
        [
            "--config",
            str(path),
            "--fcm-burst",
            "5",
            "--webhook-secret",
            "whsec_abc",
            "--twilio-account",
            "AC1:tok",
            "--fcm-option",
            'static_tokens=["t1"]',
        ]
    )
    config = config_from_args(args)
    assert list(config.providers) == ["fcm", "webhook", "twilio"]
    fcm = config.providers["fcm"]
    assert (fcm.port, fcm.rate, fcm.burst, fcm.errors.transient) == (0, 100, 5, 0.1)
    assert fcm.options["static_tokens"] == ["t1"]
    assert config.providers["webhook"].options["secret"] == "whsec_abc"
    assert config.providers["twilio"].options["accounts"] == {"AC1": "tok"}
    assert config.max_records == 10


def test_background_sandbox_in_process() -> None:
    config = SandboxConfig.default(only=["fcm"])
    config.providers["fcm"].port = 0
    config.providers["fcm"].update({"options": {"static_tokens": ["static-token"]}})
    with BackgroundSandbox(config) as sandbox:
        response = httpx.post(
            sandbox.urls["fcm"] + "/v1/projects/p/messages:send",
            json={"message": {"token": "device", "data": {"notification_id": "n-1"}}},
            headers={"Authorization": "Bearer static-token"},
        )
        assert response.status_code == 200
        with SandboxClient(sandbox.urls["fcm"]) as client:
            assert client.requests()[0]["idempotency_key"] == "n-1"


def test_the_procfile_runs_the_sandbox_on_its_default_ports_with_the_platforms_webhook_secret() -> None:
    procfile = dict(line.split(": ", 1) for line in (REPO_ROOT / "Procfile").read_text().splitlines() if line.strip())
    env = read_env_file()
    argv = [
        arg.replace("$WEBHOOK_SIGNING_SECRET", env["WEBHOOK_SIGNING_SECRET"])
        for arg in shlex.split(procfile["sandbox"])
    ]
    assert argv[:3] == ["python", "-m", "provider_sandbox"]
    config = config_from_args(build_parser().parse_args(argv[3:]))
    assert {name: provider.port for name, provider in config.providers.items()} == DEFAULT_PORTS
    assert config.providers["webhook"].options["secret"] == env["WEBHOOK_SIGNING_SECRET"]
