"""Tests of the cluster topology (`platform/services --cluster`): they run when REDIS_URL names a Redis
Cluster and Kafka has three brokers, and are skipped otherwise. The failover tests also need
PLATFORM_STATE_DIR, the cluster's state folder, to find the processes they kill and to start them again."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient
from django.conf import settings

from notifications.bus.config import admin_config
from notifications.redis_connect import is_cluster_url, parse_cluster_url

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cluster_topology() -> None:
    if not is_cluster_url(settings.REDIS_URL):
        pytest.skip("REDIS_URL does not name a Redis Cluster (see platform/ci-cluster)")
    brokers = AdminClient(admin_config()).list_topics(timeout=10).brokers
    if len(brokers) < 3:
        pytest.skip(f"Kafka has {len(brokers)} broker(s), the cluster topology three")


@pytest.fixture(autouse=True)
def _cluster_only(cluster_topology) -> None:
    """Every test here needs the cluster topology."""


class ClusterProcesses:
    """The cluster's broker and Redis node processes, by the pid files `platform/services` keeps."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def _pid(self, name: str) -> int:
        return int((self.state_dir / "run" / f"{name}.pid").read_text().split()[0])

    def _kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError(f"pid {pid} survived SIGKILL")

    def kill_kafka_broker(self, node_id: int) -> None:
        self._kill(self._pid(f"kafka-{node_id}"))

    def kill_redis_node(self, port: int) -> None:
        self._kill(self._pid(f"redis-{port}"))

    def redis_nodes(self) -> list[dict[str, str | int]]:
        """CLUSTER NODES as the first live node sees them: id, port, role (master/slave), master id."""
        for node in parse_cluster_url(settings.REDIS_URL)[0]:
            try:
                table = redis.Redis(host=node.host, port=node.port, socket_timeout=1).execute_command("CLUSTER NODES")
            except redis.RedisError:
                continue
            return [
                {
                    "id": info["node_id"],
                    "port": int(address.split("@")[0].rsplit(":", 1)[1]),
                    "role": "master" if "master" in info["flags"] else "slave",
                    "master": info["master_id"],
                }
                for address, info in table.items()
            ]
        raise AssertionError("no Redis Cluster node answers")

    def start(self, component: str) -> None:
        """`platform/services --cluster up <component>`: starts whatever is not running (idempotent)."""
        subprocess.run(
            [str(REPO / "platform" / "services"), "--cluster", "up", component],
            env={**os.environ, "PLATFORM_STATE_DIR": str(self.state_dir)},
            check=True,
            timeout=300,
            stdout=subprocess.DEVNULL,
        )


@pytest.fixture
def cluster_processes():
    """Kill cluster processes in a test; whatever was killed is started again afterwards."""
    state = os.environ.get("PLATFORM_STATE_DIR")
    if (
        not state
        or not (Path(state) / "topology").is_file()
        or (Path(state) / "topology").read_text().strip() != "cluster"
    ):
        pytest.skip("PLATFORM_STATE_DIR must name the cluster topology's state folder")
    processes = ClusterProcesses(Path(state))
    yield processes
    processes.start("redis")
    processes.start("kafka")
