"""`/healthz` and `/readyz` against the real services, and a Redis that really stops."""

import socket
import subprocess
import tempfile
import time

import pytest
import redis

pytestmark = pytest.mark.django_db


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_all_up(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert set(response.json()["components"]) == {"postgres", "redis", "kafka", "ingest"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readyz_reports_a_stopped_redis(client, settings):
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        subprocess.run(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "yes",
                "--save",
                "",
                "--dir",
                workdir,
                "--logfile",
                f"{workdir}/redis.log",
            ],
            check=True,
        )
        own = redis.Redis(port=port)
        for _ in range(50):
            try:
                own.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
        assert client.get("/readyz").status_code == 200
        own.shutdown(nosave=True)  # really stop it
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["components"]["redis"]["ok"] is False and "Connection" in body["components"]["redis"]["error"]
    assert body["components"]["postgres"]["ok"] is True and body["components"]["kafka"]["ok"] is True
