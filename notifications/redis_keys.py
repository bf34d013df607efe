"""Hash tags: the keys a Lua script or a MULTI touches together share one Redis Cluster slot."""

from __future__ import annotations

import binascii
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS as SLOTS
from redis.crc import key_slot as _key_slot

__all__ = [
    "DEDUP_SHARDS",
    "SLOTS",
    "dedup_shard_tag",
    "dedup_shard_tags",
    "hash_tag",
    "key_slot",
    "require_untagged",
    "sharded_counter_key",
    "sharded_counter_keys",
]

#: Dedup keys are spread over this many hash tags, one slot each, spaced evenly over the slot range
#: (a master owning a third of the slots holds a third of them). Each tag also holds that shard's
#: counters (a campaign's `sent`), so the dedup confirm can count in its own slot. 256: every
#: master of a cluster of up to ~30 gets a share within a few percent, and reading a sharded counter
#: is 256 GETs. Changing it renames every dedup key (markers written before are no longer seen).
DEDUP_SHARDS = 256


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key`` (CRC16 of its hash tag, or of the whole key without one)."""
    return _key_slot(key.encode() if isinstance(key, str) else key)


def require_untagged(text: str, what: str) -> str:
    """``text`` (a key prefix, a counter name) unchanged; a brace in it would move its keys' slot."""
    if "{" in text or "}" in text:
        raise ValueError(f"{what} must not contain braces (they are Redis Cluster hash tags): {text!r}")
    return text


def hash_tag(value: str | int) -> str:
    """``{value}``: keys carrying the same tag (first braces of the key) share one slot."""
    return "{" + require_untagged(str(value), "a hash tag") + "}"


@cache
def dedup_shard_tags() -> tuple[str, ...]:
    """The DEDUP_SHARDS tags: tag i hashes into the i-th equal part of the slot range."""
    tags: list[str | None] = [None] * DEDUP_SHARDS
    missing, candidate = DEDUP_SHARDS, 0
    while missing:
        tag = f"d{candidate}"
        shard = key_slot(tag) * DEDUP_SHARDS // SLOTS
        if tags[shard] is None:
            tags[shard] = tag
            missing -= 1
        candidate += 1
    return tuple(t for t in tags if t is not None)


def dedup_shard_tag(idempotency_key: str) -> str:
    """The tag (without braces) of the shard an idempotency key's dedup key lives in."""
    return dedup_shard_tags()[binascii.crc32(idempotency_key.encode()) % DEDUP_SHARDS]


def sharded_counter_key(prefix: str, name: str, tag: str) -> str:
    """``{prefix}<name>:{<tag>}``: shard ``tag``'s part of counter ``name`` (its total is the sum)."""
    return f"{prefix}{require_untagged(name, 'a counter name')}:{hash_tag(tag)}"


def sharded_counter_keys(prefix: str, name: str) -> list[str]:
    """Every shard's key of counter ``name``, to add them up."""
    return [sharded_counter_key(prefix, name, tag) for tag in dedup_shard_tags()]
