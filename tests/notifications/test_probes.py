"""/healthz and /readyz of the long-running roles, on their /metrics server: real role processes
against the real services (and a Redis that is not there), and a loop that stops turning."""

import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import orjson
import pytest

from notifications.probes import LoopHeartbeat, serve_probes
from tests.waiting import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> tuple[int, dict | bytes]:
    """(status, JSON body, or raw bytes for /metrics); (0, b"") while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""
    return status, orjson.loads(body) if path != "/metrics" else body


class Role:
    """A role started as `manage.py <args> --metrics-port <port>`, stopped with SIGTERM."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", *args, "--metrics-port", str(self.port)], env={**env, "LOG_LEVEL": "WARNING"}
        )

    def get(self, path: str) -> tuple[int, dict | bytes]:
        assert self.proc.poll() is None, f"the role exited with {self.proc.returncode}"
        return get(self.port, path)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def test_a_consumer_process_is_healthy_and_ready_and_names_a_dependency_that_is_down(subprocess_env):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    roles = {
        "triage": Role(subprocess_env, "run_consumer", "dlq-triage"),
        "triage without redis": Role({**subprocess_env, "REDIS_URL": dead_redis}, "run_consumer", "dlq-triage"),
        "relay without redis": Role({**subprocess_env, "REDIS_URL": dead_redis}, "relay_outbox"),
    }
    try:
        for role in roles.values():
            wait_for(lambda role=role: role.get("/healthz")[0] == 200, timeout=60, what="the loop turns")

        status, ready = roles["triage"].get("/readyz")
        assert status == 200 and ready["status"] == "ready" and ready["down"] == []
        assert set(ready["components"]) == {"loop", "postgres", "redis", "kafka"}
        assert b"python_info" in roles["triage"].get("/metrics")[1], "/metrics is still served"

        status, ready = roles["triage without redis"].get("/readyz")
        assert status == 503 and ready["status"] == "unavailable" and ready["down"] == ["redis"]
        assert "Connection" in ready["components"]["redis"]["error"]
        status, health = roles["triage without redis"].get("/healthz")
        assert status == 200 and health["components"]["loop"]["ok"], "alive: a restart would not bring Redis back"

        status, ready = roles["relay without redis"].get("/readyz")
        assert status == 200 and set(ready["components"]) == {"loop", "postgres", "kafka"}, "the relay needs no Redis"
    finally:
        codes = {name: role.stop() for name, role in roles.items()}
    assert set(codes.values()) == {0}, codes


def test_a_loop_that_stops_turning_is_unhealthy_and_unready():
    now = [1000.0]
    heartbeat = LoopHeartbeat(clock=lambda: now[0])
    server = serve_probes(0, "127.0.0.1", ["postgres"], heartbeat=heartbeat, stall_seconds=30)
    port = server.server_address[1]
    try:
        status, health = get(port, "/healthz")
        assert status == 503 and health["down"] == ["loop"], "no turn yet"
        heartbeat.beat()
        now[0] += 29
        assert get(port, "/healthz")[0] == 200
        status, ready = get(port, "/readyz")
        assert status == 200 and ready["components"]["loop"]["last_turn_seconds_ago"] == 29
        now[0] += 2
        status, health = get(port, "/healthz")
        assert status == 503 and health["down"] == ["loop"] and "stalled" in health["components"]["loop"]["error"]
        status, ready = get(port, "/readyz")
        assert status == 503 and ready["down"] == ["loop"] and ready["components"]["postgres"]["ok"]
    finally:
        server.shutdown()
        server.server_close()
