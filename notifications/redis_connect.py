"""Redis clients from a URL: one server (``redis://``) or a Redis Cluster (``redis+cluster://h:p,…``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import redis
from redis._parsers.commands import CommandPolicies, RequestPolicy, ResponsePolicy
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.policies import BasePolicyResolver, PolicyResolver, StaticPolicyResolver
from redis.exceptions import RedisClusterException
from redis.retry import Retry

__all__ = ["CLUSTER_SCHEMES", "REDIS_ERRORS", "is_cluster", "is_cluster_url", "parse_cluster_url", "redis_from_url"]

#: ``redis+cluster://`` plain, ``rediss+cluster://`` TLS. The host list names startup nodes (any
#: node of the cluster will do: the client discovers the others and follows failovers).
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}

#: What a Redis call raises when Redis cannot answer: ``RedisError``, and on a cluster also
#: ``RedisClusterException`` (no node reachable while the client refreshes its slot map, a slot
#: without a master in the middle of a failover), which redis-py does not derive from
#: ``RedisError``. Every call site's error policy (fail open, fail closed, skip) catches both.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def is_cluster(client: Any) -> bool:
    """True for a ``RedisCluster`` client (or one of its pipelines)."""
    return isinstance(client, RedisCluster)


def redis_from_url(
    url: str,
    *,
    socket_timeout: float,
    socket_connect_timeout: float,
    retries: int,
    health_check_interval: int,
    max_connections: int | None = None,
) -> redis.Redis:
    """A client for ``url``, failing fast: ``retries`` immediate retries, no backoff.

    redis-py's default retries ten times with backoff (about 4 s before an error surfaces); callers
    have their own fail-open/closed policies and breakers, so they need errors fast. On a cluster a
    retry first refreshes the slot map, which is how a failover or a moved slot is followed.
    """
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "health_check_interval": health_check_interval,
        "retry": Retry(NoBackoff(), retries),
    }
    if max_connections is not None:
        options["max_connections"] = max_connections
    if is_cluster_url(url):
        return _cluster_from_url(url, **options)
    return redis.Redis.from_url(url, **options)


class ScriptCallPolicies(BasePolicyResolver):
    """EVAL and EVALSHA are keyed commands: their keys follow ``numkeys``. Without a policy for them,
    redis-py's cluster pipeline asks the server which arguments are keys (COMMAND GETKEYS, one
    synchronous round trip per queued call), which made a pipelined dedup confirm cost four times
    the client CPU of the same pipeline on one server."""

    KEYED = CommandPolicies(request_policy=RequestPolicy.DEFAULT_KEYED, response_policy=ResponsePolicy.DEFAULT_KEYED)

    def __init__(self, fallback: PolicyResolver | None = None) -> None:
        super().__init__({"core": {"eval": self.KEYED, "evalsha": self.KEYED}}, fallback or StaticPolicyResolver())

    def with_fallback(self, fallback: PolicyResolver) -> PolicyResolver:
        return ScriptCallPolicies(fallback)


class PlatformRedisCluster(RedisCluster):
    """``RedisCluster`` whose pipelines route script calls by their declared keys (``ScriptCallPolicies``;
    ``pipeline()`` does not hand the client's policy resolver to the pipeline)."""

    def pipeline(self, transaction=None, shard_hint=None):
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        pipe._policy_resolver = self._policy_resolver
        return pipe


def _cluster_from_url(url: str, **options: Any) -> RedisCluster:
    nodes, url_options = parse_cluster_url(url)
    return PlatformRedisCluster(
        startup_nodes=nodes,
        policy_resolver=ScriptCallPolicies(),
        # Serve the slots of the live masters while another master is being failed over.
        require_full_coverage=False,
        **url_options,
        **options,
    )


def parse_cluster_url(url: str) -> tuple[list[ClusterNode], dict[str, Any]]:
    """``redis+cluster://[user:password@]host:port[,host:port…][/0]`` → (startup nodes, options)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL: {url!r}")
    netloc, _, path = rest.partition("/")
    if path.partition("?")[0] not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0")
    credentials, _, hosts = netloc.partition("?")[0].rpartition("@")
    username, _, password = credentials.partition(":")
    options: dict[str, Any] = {"ssl": CLUSTER_SCHEMES[scheme.lower()]}
    if username:
        options["username"] = unquote(username)
    if password:
        options["password"] = unquote(password)
    nodes = []
    for entry in hosts.split(","):
        host, _, port = entry.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a cluster node must be host:port, not {entry!r}")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    return nodes, options
