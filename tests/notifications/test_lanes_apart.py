"""A dispatcher per events lane (`run_consumer dispatcher --lane …`): each process reads its lane alone,
in the lane's consumer group; roles that keep their lanes in one process refuse the option."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from django.core.management import CommandError, call_command

from notifications.bus.config import consumer_config
from notifications.bus.consumers import LaneNotApart, consumer
from notifications.bus.lanes import lane_group
from notifications.bus.runner import ConsumerRunner
from notifications.bus.topics import events_topic
from notifications.priority import Lane
from tests.kafka_helpers import produce_raw
from tests.waiting import wait_for


class RecordingHandler:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def handle_batch(self, messages):
        self.values += [m.value() for m in messages]


@pytest.mark.parametrize("lane", list(Lane))
def test_a_process_of_one_lane_reads_that_lane_alone_in_its_group(topics, running, lane):
    group = f"dispatcher-{uuid.uuid4().hex[:6]}"
    config = consumer("dispatcher").runner_config(lane=lane, group=group, poll_timeout=0.2)
    handler = RecordingHandler()
    runner = ConsumerRunner(config, handler)
    assert runner.consumer.lanes == [lane]
    with running(runner):
        produce_raw(events_topic(Lane.PRIORITY), [("1", b"urgent")])
        produce_raw(events_topic(Lane.BULK), [("1", b"digest")])
        wait_for(lambda: handler.values, what="the lane's message")
        time.sleep(2)  # the other lane's message would arrive meanwhile
    assert handler.values == [b"urgent" if lane is Lane.PRIORITY else b"digest"]
    assert committed(lane_group(group, lane), events_topic(lane)) == 1


def committed(group: str, topic: str) -> int:
    """The group's committed offsets of `topic`, summed over its partitions (unset counts 0)."""
    reader = Consumer(consumer_config(group))
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = reader.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        reader.close()


def test_roles_that_keep_their_lanes_together_refuse_a_lane(settings):
    with pytest.raises(LaneNotApart):
        consumer("worker-email").runner_config(lane=Lane.BULK)
    with pytest.raises(CommandError, match="worker-email reads its lanes in one process"):
        call_command("run_consumer", "worker-email", "--lane", "bulk")
    settings.PRIORITY_LANES = False  # one lane: the priority lane's process reads it all
    with pytest.raises(LaneNotApart, match="PRIORITY_LANES is off"):
        consumer("dispatcher").runner_config(lane=Lane.BULK)
    assert consumer("dispatcher").runner_config(lane=Lane.PRIORITY).topics == [events_topic(Lane.PRIORITY)]
