"""Riding out dependency outages: which errors count as one, the backoff, and the web process's
answers while PostgreSQL is unreachable (503 + Retry-After, never 500; /readyz names the component)."""

from __future__ import annotations

import random
import socket
import subprocess
import sys

import httpx
import psycopg
import pytest
import redis
from confluent_kafka import KafkaError, KafkaException
from django.db import InterfaceError, OperationalError

from notifications.outages import KafkaUnavailable, Outage, dependency_of
from tests.waiting import wait_for


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (OperationalError("connection refused"), "postgresql"),
        (InterfaceError("connection already closed"), "postgresql"),
        (psycopg.OperationalError("server closed the connection"), "postgresql"),
        (redis.ConnectionError("Connection refused"), "redis"),
        (redis.TimeoutError("Timeout reading from socket"), "redis"),
        (KafkaUnavailable("3 unacknowledged"), "kafka"),
        (KafkaException(KafkaError(KafkaError._TRANSPORT)), "kafka"),
        (KafkaException(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE)), "kafka"),
        (KafkaException(KafkaError(KafkaError._WAIT_COORD)), "kafka"),
        (KafkaException(KafkaError(KafkaError.INVALID_MSG)), None),
        (KafkaException(KafkaError(KafkaError._TRANSPORT, fatal=True)), None),
        (ValueError("a bug"), None),
        (redis.ResponseError("WRONGTYPE"), None),
    ],
)
def test_what_counts_as_a_dependency_outage(error, dependency):
    assert dependency_of(error) == dependency


def test_an_outage_wrapped_in_another_exception_is_still_recognised():
    try:
        try:
            raise redis.ConnectionError("Connection refused")
        except redis.ConnectionError as exc:
            raise RuntimeError("loading preferences failed") from exc
    except RuntimeError as wrapped:
        assert dependency_of(wrapped) == "redis"


def test_waits_grow_with_jitter_up_to_the_cap_and_reset_when_the_dependency_is_back():
    outage = Outage("test", first_wait=0.2, max_wait=5.0, rng=random.Random(7))
    waits = [outage.failed("redis", OperationalError("x")) for _ in range(12)]
    assert outage.active and outage.failures == 12
    assert 0.1 <= waits[0] <= 0.2, "the first wait is short: most outages are a restart"
    assert all(w <= 5.0 for w in waits) and max(waits[-4:]) > 2.5, "capped, and close to the cap after a while"
    assert len(set(waits)) == len(waits), "jittered: roles do not reconnect in lockstep"
    outage.recovered()
    assert not outage.active and 0.1 <= outage.failed("redis", OperationalError("x")) <= 0.2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.slow
def test_with_the_database_unreachable_the_api_answers_503_with_retry_after_and_readyz_names_it(subprocess_env):
    port = _closed_port()
    env = {**subprocess_env, "DATABASE_URL": f"postgres://notif:notif@127.0.0.1:{_closed_port()}/notifications"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port), "--log-level", "warning"],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthz"), timeout=30)
        event = {"type": "order.shipped", "recipients": [{"user_id": 1}], "event_id": "e-1"}
        ingest = httpx.post(f"{base}/api/v1/events", json=event, headers={"Authorization": "Api-Key np_abc_def"})
        assert ingest.status_code == 503 and ingest.headers["Retry-After"].isdigit()
        assert ingest.json()["code"] == "unavailable"
        end_user = httpx.get(f"{base}/api/v1/me/preferences", headers={"Authorization": "Token 0123456789abcdef"})
        assert end_user.status_code == 503 and end_user.headers["Retry-After"].isdigit()
        assert end_user.json()["code"] == "unavailable"
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503
        components = ready.json()["components"]
        assert components["postgres"]["ok"] is False and "OperationalError" in components["postgres"]["error"]
        assert components["redis"]["ok"] is True and components["kafka"]["ok"] is True
    finally:
        server.terminate()
        server.wait(15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
