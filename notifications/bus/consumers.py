"""The consumer registry: every Kafka consumer role of the platform, by name.

`manage.py run_consumer <name>` runs any of them; the role commands (`run_dispatcher`, `run_worker`,
…) are aliases of it. A new consumer is a handler module and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from notifications.bus.runner import ConsumerRunner, RunnerConfig
from notifications.bus.topics import RETRY_TIERS, channel_topic, delivery_topic, events_topic, topic_name
from notifications.channels import ALL_CHANNELS
from notifications.priority import Lane


def _no_topics() -> list[str]:
    return []


@dataclass(frozen=True)
class ConsumerSpec:
    name: str
    #: The consumer group of the priority lane (the bulk lane's is `<group>.bulk`).
    group: str
    #: Dotted path of the function that builds the role's runner from keyword options.
    factory: str
    topics: Callable[[], list[str]]
    bulk_topics: Callable[[], list[str]] = _no_topics
    #: Where the role dead-letters a message it consumed from a topic (None: it never does).
    dlq_topic: Callable[[str], str] | None = None
    #: The Prometheus port of the role's process in the Procfile.
    metrics_port: int = 0
    #: Fixed arguments of the factory (a worker's channel).
    options: Mapping[str, Any] = field(default_factory=dict)
    #: What the role's /readyz checks (names of `notifications.health.CHECKS`).
    dependencies: tuple[str, ...] = ("postgres", "redis", "kafka")
    #: Whether a process may read one lane alone (`run_consumer --lane`), so the lanes of the role
    #: do not share a process's CPU (`docs/architecture.md`, "Priority lanes").
    lanes_apart: bool = False

    def runner_config(self, *, lane: Lane | None = None, **overrides: Any) -> RunnerConfig:
        """The role's RunnerConfig: its name, topics and group (of `lane` only, when given), with
        `overrides` (None: the default)."""
        topics, bulk_topics = self.topics(), self.bulk_topics() if settings.PRIORITY_LANES else []
        if lane is not None:
            if not self.lanes_apart:
                raise LaneNotApart(f"{self.name} reads its lanes in one process; --lane is not for it")
            if lane is Lane.BULK and not bulk_topics:
                raise LaneNotApart("PRIORITY_LANES is off: every message is in the priority lane, none is bulk")
            topics, bulk_topics = (topics, []) if lane is Lane.PRIORITY else ([], bulk_topics)
        values: dict[str, Any] = {"role": self.name, "topics": topics, "bulk_topics": bulk_topics, "group": self.group}
        values.update({key: value for key, value in overrides.items() if value is not None})
        return RunnerConfig(**values)

    def build(self, **options: Any) -> ConsumerRunner:
        """The role's runner, ready to `run()`."""
        return import_string(self.factory)(**{**self.options, **options})


class LaneNotApart(ValueError):
    """`--lane` asked of a role that reads its lanes in one process, or with the lanes off."""


class UnknownConsumer(KeyError):
    def __str__(self) -> str:
        return f"unknown consumer {self.args[0]!r}; known: {', '.join(consumers())}"


def worker_topics(channel: str, lane: Lane = Lane.PRIORITY) -> list[str]:
    """A channel's lane and its retry tiers."""
    return [delivery_topic(channel, lane)] + [delivery_topic(channel, lane, tier) for tier, _ in RETRY_TIERS]


def batch_topics(channels: list[str] | tuple[str, ...] = ALL_CHANNELS) -> list[str]:
    return [channel_topic(channel, "batch") for channel in channels]


def _channel_of(topic: str) -> str:
    """The channel of `notif.<channel>…` (a full topic name)."""
    return topic.rpartition("notif.")[2].split(".", 1)[0]


def _channel_dlq(topic: str) -> str:
    return channel_topic(_channel_of(topic), "dlq")


def consumers() -> dict[str, ConsumerSpec]:
    specs = [
        ConsumerSpec(
            name="dispatcher",
            group="dispatcher",
            factory="notifications.dispatch.dispatcher.build_dispatcher_runner",
            topics=lambda: [events_topic()],
            bulk_topics=lambda: [events_topic(Lane.BULK)],
            dlq_topic=lambda _topic: topic_name("events.dlq"),
            metrics_port=9102,
            lanes_apart=True,
        ),
        *(
            ConsumerSpec(
                name=f"worker-{channel}",
                group=f"worker.{channel}",
                factory="notifications.delivery.wiring.build_worker_runner",
                topics=lambda channel=channel: worker_topics(channel),
                bulk_topics=lambda channel=channel: worker_topics(channel, Lane.BULK),
                dlq_topic=_channel_dlq,
                metrics_port=port,
                options={"channel": channel},
            )
            for channel, port in zip(ALL_CHANNELS, range(9103, 9103 + len(ALL_CHANNELS)), strict=True)
        ),
        ConsumerSpec(
            name="dlq-triage",
            group="dlq-triage",
            factory="notifications.dlq.triage.build_triage_runner",
            topics=lambda: [*(channel_topic(channel, "dlq") for channel in ALL_CHANNELS), topic_name("events.dlq")],
            metrics_port=9108,
        ),
        ConsumerSpec(
            name="campaign-orchestrator",
            group="campaign-orchestrator",
            factory="campaigns.orchestrator.build_orchestrator_runner",
            topics=lambda: [topic_name("campaigns")],
            metrics_port=9109,
        ),
        ConsumerSpec(
            name="campaign-expander",
            group="campaign-expander",
            factory="campaigns.expansion.expander.build_expander_runner",
            topics=batch_topics,
            dlq_topic=_channel_dlq,
            metrics_port=9110,
        ),
    ]
    return {spec.name: spec for spec in specs}


def consumer(name: str) -> ConsumerSpec:
    try:
        return consumers()[name]
    except KeyError:
        raise UnknownConsumer(name) from None
