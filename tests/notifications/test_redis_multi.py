"""Redis clients from REDIS_URL (one server or a cluster), many-key reads and pipelined scripts on both."""

from __future__ import annotations

import uuid

import pytest
import redis
from redis.commands.core import Script

from notifications.redis_client import get_redis
from notifications.redis_connect import is_cluster, is_cluster_url, parse_cluster_url, redis_from_url
from notifications.redis_keys import hash_tag, key_slot
from notifications.redis_multi import evalsha_pipelined, get_many

INCR_BY = b"-- test script\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
def client(settings):
    prefix = f"test:multi:{uuid.uuid4().hex}:"
    client = get_redis()
    yield client, prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def test_a_cluster_url_names_its_startup_nodes_and_credentials():
    nodes, options = parse_cluster_url("rediss+cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0")
    assert [(n.host, n.port) for n in nodes] == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert options == {"ssl": True, "username": "app", "password": "p@ss"}
    assert is_cluster_url("redis+cluster://h:1") and not is_cluster_url("redis://h:1/0")
    with pytest.raises(ValueError, match="database 0"):
        parse_cluster_url("redis+cluster://h:1/3")
    with pytest.raises(ValueError, match="host:port"):
        parse_cluster_url("redis+cluster://h")


def test_a_plain_url_builds_a_client_for_one_server():
    client = redis_from_url(
        "redis://127.0.0.1:1/0", socket_timeout=0.1, socket_connect_timeout=0.1, retries=0, health_check_interval=0
    )
    assert isinstance(client, redis.Redis) and not is_cluster(client)


def test_get_many_reads_keys_of_many_slots_in_their_order(client):
    client, prefix = client
    keys = [f"{prefix}k{i}" for i in range(50)]
    assert len({key_slot(k) for k in keys}) > 10
    for i, key in enumerate(keys[::2]):
        client.set(key, i)
    assert get_many(client, keys) == [str(i // 2).encode() if i % 2 == 0 else None for i in range(50)]
    assert get_many(client, []) == []


def test_pipelined_script_calls_run_where_their_keys_live_and_load_the_script_when_missing(client):
    client, prefix = client
    script = Script(None, INCR_BY + f"\n-- {uuid.uuid4().hex}".encode())  # a script no server has seen
    calls = [([f"{prefix}n{i}"], [i]) for i in range(30)]
    assert evalsha_pipelined(client, script, calls) == list(range(30))
    assert evalsha_pipelined(client, script, calls) == [2 * i for i in range(30)]
    tagged = [([f"{prefix}{hash_tag('one')}:a"], [1]), ([f"{prefix}{hash_tag('one')}:b"], [2])]
    assert evalsha_pipelined(client, script, tagged) == [1, 2]


def test_only_the_calls_answered_noscript_run_again(client):
    """On a cluster one master may have the script while another lost it in a failover: the calls that
    ran there must not run twice."""
    client, prefix = client
    if not is_cluster(client):
        pytest.skip("one server has one script cache: all calls or none answer NOSCRIPT")
    script = Script(None, INCR_BY + f"\n-- {uuid.uuid4().hex}".encode())
    client.execute_command("SCRIPT LOAD", script.script, target_nodes=client.get_primaries()[:1])
    calls = [([f"{prefix}once{i}"], [1]) for i in range(60)]
    assert evalsha_pipelined(client, script, calls) == [1] * 60
    assert get_many(client, [keys[0] for keys, _ in calls]) == [b"1"] * 60


def test_cluster_pipelines_route_script_calls_without_asking_the_server_for_their_keys(client):
    """redis-py's cluster pipeline sends COMMAND GETKEYS for every EVALSHA it has no policy for."""
    client, prefix = client
    if not is_cluster(client):
        pytest.skip("a single server needs no routing")

    def getkeys_calls() -> int:
        stats = client.info("commandstats", target_nodes=client.get_primaries()).values()
        return sum(int((s.get("cmdstat_command|getkeys") or {}).get("calls", 0)) for s in stats)

    before = getkeys_calls()
    evalsha_pipelined(client, Script(None, INCR_BY), [([f"{prefix}r{i}"], [1]) for i in range(50)])
    assert getkeys_calls() == before


def test_a_failed_call_raises_or_is_returned_in_its_place(client):
    client, prefix = client
    client.rpush(f"{prefix}list", "x")
    script = Script(None, INCR_BY)
    calls = [([f"{prefix}fine"], [1]), ([f"{prefix}list"], [1])]
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        evalsha_pipelined(client, script, calls)
    replies = evalsha_pipelined(client, script, calls, raise_on_error=False)
    assert replies[0] == 2 and isinstance(replies[1], redis.ResponseError)
