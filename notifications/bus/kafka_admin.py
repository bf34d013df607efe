"""Creating and checking topics with the Kafka AdminClient (used by `ensure_topics` and tests)."""

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from notifications.bus.config import admin_config
from notifications.bus.topics import TopicSpec, registry


@dataclass
class EnsureReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # human-readable lines


def ensure_topics(*, specs: list[TopicSpec] | None = None, timeout: float = 30.0) -> EnsureReport:
    """Create every registry topic that is missing; report existing ones whose partitions or
    replication factor differ. Returns once the brokers serve every topic it created.

    Never changes an existing topic: growing partitions reshuffles keys, and adding replicas is a
    reassignment, both an operator's call.
    """
    specs = registry() if specs is None else specs
    admin = AdminClient(admin_config())
    existing = admin.list_topics(timeout=timeout).topics
    report = EnsureReport()
    to_create: list[NewTopic] = []
    for spec in specs:
        meta = existing.get(spec.full_name)
        if meta is None:
            to_create.append(
                NewTopic(
                    spec.full_name,
                    num_partitions=spec.partition_count,
                    replication_factor=spec.replication_factor,
                    config=spec.config(),
                )
            )
            continue
        report.existing.append(spec.full_name)
        if len(meta.partitions) != spec.partition_count:
            report.mismatched.append(
                f"{spec.full_name}: has {len(meta.partitions)} partitions, registry says {spec.partition_count}"
            )
        replicas = len(next(iter(meta.partitions.values())).replicas) if meta.partitions else 0
        if replicas != spec.replication_factor:
            report.mismatched.append(
                f"{spec.full_name}: has {replicas} replicas, registry says {spec.replication_factor}"
            )
    if to_create:
        for name, future in admin.create_topics(to_create, operation_timeout=timeout).items():
            try:
                future.result()
                report.created.append(name)
            except KafkaException as exc:
                if exc.args[0].name() == "TOPIC_ALREADY_EXISTS":  # a concurrent ensure_topics won
                    report.existing.append(name)
                else:
                    raise
        wait_until_served(admin, {t.topic: t.num_partitions for t in to_create}, timeout=timeout)
    return report


def wait_until_served(admin: AdminClient, partitions: dict[str, int], *, timeout: float) -> None:
    """Wait until the metadata lists every topic with all its partitions led. A created topic is
    committed by the controller first and reaches each broker's metadata a moment later; a consumer
    subscribing in between fails with UNKNOWN_TOPIC_OR_PART."""
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        missing = [
            name
            for name, count in partitions.items()
            if name not in topics
            or len(topics[name].partitions) != count
            or any(p.leader < 0 for p in topics[name].partitions.values())
        ]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{len(missing)} created topics not served after {timeout} s, e.g. {missing[0]}")
        time.sleep(0.1)


def delete_topics_with_prefix(prefix: str, *, timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with `prefix` (test clean-up). Refuses an empty prefix."""
    if not prefix:
        raise ValueError("refusing to delete topics with an empty prefix")
    admin = AdminClient(admin_config())
    names = [t for t in admin.list_topics(timeout=timeout).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=timeout).values():
            future.result()
    return names
