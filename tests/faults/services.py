"""The suite's private PostgreSQL, Redis and Kafka: guard, restart and SIGKILL through `platform/services`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "platform" / "services"
#: The shared services' ports (`platform/services help`): the suite never stops or restarts these.
SHARED_PORTS = {"POSTGRES_PORT": 55432, "REDIS_PORT": 56379, "KAFKA_PORT": 59092, "KAFKA_CONTROLLER_PORT": 59093}


def private_services_problem() -> str | None:
    """Why the running environment is not the suite's private set (None when it is): `make faults`
    exports a state folder of its own and alternate ports, and the URLs the tests use must match them."""
    if os.environ.get("FAULTS_PRIVATE_SERVICES") != "1":
        return "run through `make faults` (it brings up a private PostgreSQL, Redis and Kafka)"
    state = os.environ.get("PLATFORM_STATE_DIR", "")
    if not state or Path(state).resolve() == (REPO / ".platform").resolve():
        return "PLATFORM_STATE_DIR must name the suite's own state folder"
    for name, shared in SHARED_PORTS.items():
        if int(os.environ.get(name, shared)) == shared:
            return f"{name} is the shared services' port {shared}"
    expected = {
        "DATABASE_URL": f":{os.environ['POSTGRES_PORT']}/",
        "REDIS_URL": f":{os.environ['REDIS_PORT']}/",
        "KAFKA_BOOTSTRAP_SERVERS": f":{os.environ['KAFKA_PORT']}",
    }
    for name, fragment in expected.items():
        if fragment not in os.environ.get(name, ""):
            return f"{name} does not point at the private services ({fragment})"
    return None


def services(*args: str, timeout: float = 120.0) -> None:
    """`platform/services <args>` on the private set (its state folder and ports come from the environment)."""
    assert private_services_problem() is None, private_services_problem()
    subprocess.run([str(SERVICES), *args], check=True, timeout=timeout, capture_output=True)


def restart(component: str, *, down_for: float) -> float:
    """Stop `component` cleanly, keep it down `down_for` s, start it again; returns the outage in seconds
    (from the stop's start until it answers again)."""
    started = time.monotonic()
    services("down", component)
    time.sleep(down_for)
    services("up", component)
    return time.monotonic() - started


def sigkill_kafka(*, down_for: float) -> float:
    """SIGKILL the private broker, keep it down `down_for` s, start it again; returns the outage in seconds."""
    assert private_services_problem() is None, private_services_problem()
    pid_file = Path(os.environ["PLATFORM_STATE_DIR"]) / "run" / "kafka.pid"
    pid = int(pid_file.read_text().split()[0])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert str(Path(os.environ["PLATFORM_STATE_DIR"]).resolve()).encode() in cmdline, "the pid is the private broker"
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    time.sleep(down_for)
    services("up", "kafka")
    return time.monotonic() - started
