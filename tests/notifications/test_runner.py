"""The consumer runner's pipelined commits: a batch finishing in the background is committed only
once its future succeeds, in batch order, with at most one batch pending behind the one in hand."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import Future

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from django.db import OperationalError

from notifications.bus.config import consumer_config
from notifications.bus.runner import ConsumerRunner, RunnerConfig, membership_lost
from tests.kafka_helpers import produce_raw


class FutureHandler:
    """Returns an unresolved future per batch; the test resolves them."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.futures: list[Future] = []

    def handle_batch(self, messages):
        self.batches.append([(m.partition(), m.offset()) for m in messages])
        future: Future = Future()
        self.futures.append(future)
        return future


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def committed(group: str, topic: str, partition: int) -> int:
    reader = Consumer(consumer_config(group))
    try:
        [tp] = reader.committed([TopicPartition(topic, partition)], timeout=10)
        return tp.offset
    finally:
        reader.close()


def start(runner: ConsumerRunner) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runner.run()
        except BaseException as exc:  # the test inspects it
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


@pytest.fixture
def setup(fresh_topic):
    produce_raw(fresh_topic, [("same-key", f"m{i}".encode()) for i in range(6)])
    group = f"runner-test-{uuid.uuid4().hex[:8]}"
    handler = FutureHandler()
    runner = ConsumerRunner(
        RunnerConfig(role="runner-test", topics=[fresh_topic], group=group, batch_size=2, poll_timeout=0.2), handler
    )
    return fresh_topic, group, handler, runner


def test_commits_wait_for_the_future_and_keep_batch_order(setup):
    topic, group, handler, runner = setup
    thread, errors = start(runner)
    try:
        assert wait_for(lambda: len(handler.batches) == 2), "second batch handed over while the first is pending"
        time.sleep(0.5)
        assert len(handler.batches) == 2, "no third batch while two are pending"
        partition = handler.batches[0][0][0]
        assert committed(group, topic, partition) < 0, "nothing committed before the first future succeeds"

        handler.futures[1].set_result(None)  # the second finishes first: still nothing may be committed
        time.sleep(0.5)
        assert committed(group, topic, partition) < 0

        handler.futures[0].set_result(None)
        end_of_second = handler.batches[1][-1][1] + 1
        assert wait_for(lambda: committed(group, topic, partition) == end_of_second)
        assert wait_for(lambda: len(handler.batches) == 3)
    finally:
        runner.stop_event.set()
        for future in handler.futures:
            if not future.done():
                future.set_result(None)
        thread.join(15)
    assert not errors
    assert committed(group, topic, partition) == handler.batches[-1][-1][1] + 1, "pending batches settled on stop"


def test_a_failed_future_commits_nothing_after_it_and_stops_the_runner(setup):
    topic, group, handler, runner = setup
    thread, errors = start(runner)
    try:
        assert wait_for(lambda: len(handler.batches) == 2)
        partition = handler.batches[0][0][0]
        handler.futures[0].set_result(None)
        end_of_first = handler.batches[0][-1][1] + 1
        assert wait_for(lambda: committed(group, topic, partition) == end_of_first)
        assert wait_for(lambda: len(handler.batches) == 3)
        handler.futures[1].set_exception(RuntimeError("delivery log write failed"))
        thread.join(15)
        assert not thread.is_alive()
    finally:
        runner.stop_event.set()
        for future in handler.futures:
            if not future.done():
                future.set_result(None)
        thread.join(15)
    assert [str(e) for e in errors] == ["delivery log write failed"]
    assert committed(group, topic, partition) == end_of_first, "the failed batch and the ones after it stay uncommitted"


def test_asynchronous_commits_land_and_the_stop_commits_the_last_batch(fresh_topic):
    produce_raw(fresh_topic, [("same-key", f"m{i}".encode()) for i in range(6)])
    group = f"runner-test-{uuid.uuid4().hex[:8]}"
    handler = FutureHandler()
    runner = ConsumerRunner(
        RunnerConfig(
            role="runner-test", topics=[fresh_topic], group=group, batch_size=2, poll_timeout=0.2, async_commit=True
        ),
        handler,
    )
    thread, errors = start(runner)
    try:
        assert wait_for(lambda: sum(len(b) for b in handler.batches) >= 2)
        partition = handler.batches[0][0][0]
        for i in range(10):  # resolve as they come; the runner keeps one pending
            assert wait_for(lambda i=i: len(handler.futures) > i or sum(len(b) for b in handler.batches) == 6)
            if i < len(handler.futures):
                handler.futures[i].set_result(None)
            if sum(len(b) for b in handler.batches) == 6 and all(f.done() for f in handler.futures):
                break
        assert wait_for(lambda: committed(group, topic=fresh_topic, partition=partition) == 6)
    finally:
        runner.stop_event.set()
        for future in handler.futures:
            if not future.done():
                future.set_result(None)
        thread.join(15)
    assert not errors
    assert committed(group, fresh_topic, partition) == 6


class FlakyDatabaseHandler:
    """Handles batches synchronously; the database "goes away" for the first `failures` batches."""

    def __init__(self, failures: int, *, background: bool = False) -> None:
        self.failures = failures
        self.background = background
        self.seen: list[list[int]] = []
        self.handled: list[int] = []
        self.resets = 0

    def handle_batch(self, messages):
        offsets = [m.offset() for m in messages]
        self.partition = messages[0].partition()  # one key: one partition
        self.seen.append(offsets)
        failed = len(self.seen) <= self.failures
        if not self.background:
            if failed:
                raise OperationalError("connection to server at 127.0.0.1 failed: Connection refused")
            self.handled += offsets
            return None
        future: Future = Future()
        if failed:
            future.set_exception(OperationalError("server closed the connection unexpectedly"))
        else:
            self.handled += offsets
            future.set_result(None)
        return future

    def reset(self) -> None:
        self.resets += 1


@pytest.mark.parametrize("background", [False, True], ids=["in-hand", "background"])
def test_a_database_outage_is_ridden_out_and_the_failed_batches_are_read_again(fresh_topic, background):
    produce_raw(fresh_topic, [("same-key", f"m{i}".encode()) for i in range(6)])
    group = f"runner-test-{uuid.uuid4().hex[:8]}"
    handler = FlakyDatabaseHandler(failures=3, background=background)
    runner = ConsumerRunner(
        RunnerConfig(role="runner-test", topics=[fresh_topic], group=group, batch_size=2, poll_timeout=0.2), handler
    )
    thread, errors = start(runner)
    try:
        assert wait_for(lambda: sorted(handler.handled) == list(range(6)), timeout=30), handler.seen
        assert thread.is_alive() and not errors, "the runner does not exit on a database error"
    finally:
        runner.stop_event.set()
        thread.join(15)
    assert not errors
    assert handler.seen[0][0] == 0 and handler.seen[1][0] == 0, "the failed batch is read again from its first offset"
    assert len(handler.handled) == 6, "every message handled once after the outage"
    assert handler.resets >= 1, "the handler is told to reset its half-done state"
    assert committed(group, fresh_topic, handler.partition) == 6
    assert runner.outage.failures == 0, "the outage is over once a batch went through"


def test_an_unknown_error_still_stops_the_runner(fresh_topic):
    produce_raw(fresh_topic, [("k", b"m0")])

    class Broken:
        def handle_batch(self, messages):
            raise ValueError("a bug")

    runner = ConsumerRunner(
        RunnerConfig(role="runner-test", topics=[fresh_topic], group=f"runner-test-{uuid.uuid4().hex[:8]}"), Broken()
    )
    thread, errors = start(runner)
    thread.join(30)
    runner.stop_event.set()
    assert not thread.is_alive() and [type(e) for e in errors] == [ValueError]


class RecordingHandler:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def handle_batch(self, messages):
        self.values += [m.value() for m in messages]


def test_a_fenced_static_member_joins_again_instead_of_exiting(fresh_topic, settings):
    """Another join with the runner's `group.instance.id` fences it (a fatal consumer error; after a
    coordinator moves, the client's own abandoned rejoin can be that join): the runner gives its
    partitions up, joins again with a new consumer and goes on consuming."""
    settings.CONSUMER_INSTANCE = "0"
    group = f"runner-test-{uuid.uuid4().hex[:8]}"
    handler = RecordingHandler()
    runner = ConsumerRunner(
        RunnerConfig(role="runner-test", topics=[fresh_topic], group=group, batch_size=10, poll_timeout=0.2), handler
    )
    thread, errors = start(runner)
    try:
        assert runner.assigned.wait(30)
        produce_raw(fresh_topic, [("k", b"before")])
        assert wait_for(lambda: handler.values == [b"before"])
        intruder = Consumer(consumer_config(group))  # the same group.instance.id: the runner is fenced
        intruder.subscribe([fresh_topic])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not intruder.assignment():
            intruder.poll(0.2)
        assert intruder.assignment(), "the intruder took the instance's membership"
        intruder.close()  # a static member does not leave: the runner's next join replaces it
        assert wait_for(lambda: runner._fenced_times >= 1, timeout=30), "the runner saw itself fenced"
        produce_raw(fresh_topic, [("k", b"after")])
        assert wait_for(lambda: b"after" in handler.values, timeout=60), handler.values
        assert thread.is_alive() and not errors, errors
    finally:
        runner.stop_event.set()
        thread.join(15)
    assert not errors


@pytest.mark.parametrize(
    ("code", "lost"),
    [
        (KafkaError.UNKNOWN_MEMBER_ID, True),
        (KafkaError.ILLEGAL_GENERATION, True),
        (KafkaError.REBALANCE_IN_PROGRESS, True),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False),
        (KafkaError.FENCED_INSTANCE_ID, False),
    ],
)
def test_a_commit_refused_for_a_lost_membership_is_told_apart(code, lost):
    """Such a commit on revocation is given up (the next owner re-reads) instead of stopping the process."""
    assert membership_lost(KafkaException(KafkaError(code))) is lost
    assert membership_lost(ValueError("x")) is False
