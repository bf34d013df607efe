"""Many-key reads and pipelined Lua calls that work alike on one Redis server and on a Redis Cluster."""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from notifications.redis_connect import is_cluster

__all__ = ["ScriptCall", "evalsha_pipelined", "get_many"]

#: One script call: its keys (all of one slot) and its arguments.
ScriptCall = tuple[Sequence[str], Sequence[str | int | bytes]]


def get_many(client: redis.Redis, keys: Sequence[str]) -> list[bytes | None]:
    """The values of ``keys`` in their order: one MGET on a single server; on a cluster one MGET per
    slot, sent to every master in one pipeline (not atomic across slots, which a cache read or a
    sum of counters does not need)."""
    if not keys:
        return []
    if is_cluster(client):
        return client.mget_nonatomic(list(keys))
    return client.mget(list(keys))


def evalsha_pipelined(
    client: redis.Redis, script: Script, calls: Sequence[ScriptCall], *, raise_on_error: bool = True
) -> list:
    """Run ``script`` once per call in one non-transactional pipeline (on a cluster: one pipeline per
    master, each call sent to the master of its keys' slot).

    The script is loaded only when a server answers NOSCRIPT (after a restart or a failover emptied
    its script cache): it is then loaded on every master, and the calls that were answered NOSCRIPT
    (they did not run) are sent again; on a cluster the others may have run on masters that had the
    script, so only those are repeated. redis-py's pipelined ``Script`` sends SCRIPT EXISTS before
    every pipeline instead (a second round trip), and its cluster pipeline refuses EVALSHA by name,
    hence the plain ``execute_command``. With ``raise_on_error`` the first failed call raises;
    without it, a failed call's reply is its exception.
    """
    if not calls:
        return []
    replies: list = [None] * len(calls)
    pending = list(range(len(calls)))
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        for index in pending:
            keys, args = calls[index]
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        for index, reply in zip(pending, pipe.execute(raise_on_error=False), strict=True):
            replies[index] = reply
        pending = [index for index in pending if isinstance(replies[index], NoScriptError)]
        if not pending or attempt == 2:
            break
        client.script_load(script.script)
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
    return replies
