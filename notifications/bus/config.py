"""librdkafka configuration for the platform's producers and consumers."""

from typing import Any

from django.conf import settings

#: The largest message a producer sends (librdkafka's own default, made explicit: under the broker's
#: `message.max.bytes` of 1,048,588): a role that builds a message checks it against this before
#: producing, because librdkafka refuses a larger one with an exception, not a delivery report.
MAX_MESSAGE_BYTES = 1_000_000


def producer_config(**overrides: Any) -> dict[str, Any]:
    """An idempotent, acks=all producer whose keys land where a Java client would put them."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "enable.idempotence": True,
        "acks": "all",
        # librdkafka hashes keys with CRC32 by default, Java with murmur2: pick murmur2 everywhere.
        "partitioner": "murmur2_random",
        # A few ms of batching multiplies throughput; the relay flushes per batch anyway.
        "linger.ms": 5,
        "compression.type": "lz4",
        "batch.size": 256 * 1024,
        "queue.buffering.max.messages": 500_000,
        "message.timeout.ms": 60_000,
        "message.max.bytes": MAX_MESSAGE_BYTES,
    }
    config.update(overrides)
    return config


def consumer_config(group: str, **overrides: Any) -> dict[str, Any]:
    """A manual-commit consumer: offsets are committed only after outcomes are durable."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "group.id": f"{settings.KAFKA_CONSUMER_GROUP_PREFIX}.{settings.KAFKA_TOPIC_PREFIX}{group}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "max.poll.interval.ms": 300_000,
        "session.timeout.ms": settings.KAFKA_SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": settings.KAFKA_HEARTBEAT_INTERVAL_MS,
    }
    if settings.CONSUMER_INSTANCE:
        # Static membership: a restart within the session timeout keeps the partitions (no rebalance).
        config["group.instance.id"] = f"{config['group.id']}.{settings.CONSUMER_INSTANCE}"
    config.update(overrides)
    return config


def admin_config() -> dict[str, Any]:
    return {"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS}
