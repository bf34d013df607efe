"""The topic registry: every Kafka topic the platform uses, in one place.

`manage.py ensure_topics` creates exactly these. Names carry `settings.KAFKA_TOPIC_PREFIX`, so test
runs (and tenants) can share a cluster without colliding.
"""

from dataclasses import dataclass

from django.conf import settings

from notifications.channels import ALL_CHANNELS
from notifications.priority import Lane

DAY_MS = 24 * 3600 * 1000

#: Retry tiers: a message waits in the first tier whose delay covers its backoff. Fixed delays per
#: topic let the retry consumer pause a partition until its head is due (no sleeping past
#: max.poll.interval.ms).
RETRY_TIERS: tuple[tuple[str, float], ...] = (("5s", 5.0), ("1m", 60.0), ("10m", 600.0))


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the registry defines it. `name` is logical (no prefix)."""

    name: str
    retention_ms: int = 7 * DAY_MS
    cleanup_policy: str = "delete"
    partitions: int | None = None  # None → settings.KAFKA_DEFAULT_PARTITIONS

    @property
    def full_name(self) -> str:
        return topic_name(self.name)

    @property
    def partition_count(self) -> int:
        return self.partitions or settings.KAFKA_DEFAULT_PARTITIONS

    @property
    def replication_factor(self) -> int:
        return settings.KAFKA_REPLICATION_FACTOR

    def config(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            "min.insync.replicas": str(min_insync_replicas()),
        }


def min_insync_replicas() -> int:
    """KAFKA_MIN_INSYNC_REPLICAS, else 2 with three replicas or more (an acknowledged write survives
    the loss of any one broker, and one broker may be down without stopping writes), else 1."""
    if settings.KAFKA_MIN_INSYNC_REPLICAS is not None:
        return settings.KAFKA_MIN_INSYNC_REPLICAS
    return max(1, min(2, settings.KAFKA_REPLICATION_FACTOR - 1))


def topic_name(logical: str) -> str:
    """Full topic name for a logical name, e.g. `events` → `<prefix>notif.events`."""
    return f"{settings.KAFKA_TOPIC_PREFIX}notif.{logical}"


def channel_topic(channel: str, suffix: str = "") -> str:
    """`notif.<channel>` or `notif.<channel>.<suffix>` (dlq, delayed, batch; lanes: `delivery_topic`)."""
    return topic_name(f"{channel}.{suffix}" if suffix else channel)


def delivery_topic(channel: str, lane: Lane = Lane.PRIORITY, tier: str | None = None) -> str:
    """What a channel's workers read: `notif.<channel>[.bulk][.retry.<tier>]`."""
    name = channel if lane is Lane.PRIORITY else f"{channel}.bulk"
    return topic_name(f"{name}.retry.{tier}" if tier else name)


def events_topic(lane: Lane = Lane.PRIORITY) -> str:
    """What the dispatcher reads: `notif.events` or `notif.events.bulk`."""
    return topic_name("events" if lane is Lane.PRIORITY else "events.bulk")


def lane_of_topic(topic: str) -> Lane:
    """The lane a full topic name belongs to (`notif.<x>.bulk[...]` is bulk, anything else priority)."""
    logical = topic.rpartition("notif.")[2].split(".")
    return Lane.BULK if len(logical) > 1 and logical[1] == "bulk" else Lane.PRIORITY


def registry() -> list[TopicSpec]:
    specs = [
        TopicSpec("events", retention_ms=7 * DAY_MS),
        TopicSpec("events.bulk", retention_ms=7 * DAY_MS),
        TopicSpec("events.dlq", retention_ms=30 * DAY_MS),
        TopicSpec("campaigns", retention_ms=30 * DAY_MS),
    ]
    for channel in ALL_CHANNELS:
        specs += [
            TopicSpec(f"{channel}.batch", retention_ms=3 * DAY_MS),
            TopicSpec(f"{channel}.delayed", retention_ms=14 * DAY_MS),
            TopicSpec(f"{channel}.dlq", retention_ms=30 * DAY_MS),
        ]
        for lane_name in (channel, f"{channel}.bulk"):  # the priority and the bulk lane
            specs.append(TopicSpec(lane_name, retention_ms=3 * DAY_MS))
            specs += [TopicSpec(f"{lane_name}.retry.{tier}", retention_ms=3 * DAY_MS) for tier, _ in RETRY_TIERS]
    return specs


def tier_delay(topic: str) -> float | None:
    """The delay of the retry tier `topic` is (`notif.email.retry.1m` → 60.0); None for other topics."""
    _, sep, tier = topic.rpartition(".retry.")
    return dict(RETRY_TIERS).get(tier) if sep else None
