"""The outbox relay: moves committed outbox rows to Kafka, in order per key, at least once. Relays share
the key buckets through advisory locks, claim a batch with ``DELETE … FOR UPDATE SKIP LOCKED``, commit
after every delivery report, and wake on ``NOTIFY``. See docs/architecture.md, "Outbox and relay"."""

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client import Counter, Gauge, Histogram

from notifications.bus.producing import produce_with_retry
from notifications.cpu_priority import share_cpu_priority
from notifications.outages import Outage
from notifications.probes import HEARTBEAT

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "notif_outbox"
#: A relay's sessions are named "relay_outbox/<lanes it serves>", e.g. "relay_outbox/01": its peers
#: for a lane are the sessions whose name lists that lane.
APPLICATION_NAME = "relay_outbox"
#: First key of the two-int advisory lock is this plus the lane (0 priority, 1 bulk); the second is
#: the bucket number. A relay owns (lane, bucket) pairs.
ADVISORY_LOCK_CLASS = 7301
#: The outbox's `lane` column of the priority lane and of the bulk lane.
PRIORITY_LANE, BULK_LANE = 0, 1
LANES = (PRIORITY_LANE, BULK_LANE)
#: How often a relay re-counts its peers and rebalances buckets.
REBALANCE_INTERVAL = 2.0
OLDEST_AGE_INTERVAL = 5.0

RELAYED = Counter("outbox_relayed_events_total", "Outbox rows produced to Kafka and deleted")
RELAY_FAILURES = Counter("outbox_relay_failed_batches_total", "Batches rolled back (will be retried)")
OLDEST_AGE = Gauge("outbox_oldest_unrelayed_age_seconds", "Age of the oldest row still in the outbox")
OWNED_BUCKETS = Gauge("outbox_owned_buckets", "Key buckets this relay currently owns")
BATCH_SECONDS = Histogram(
    "outbox_relay_batch_seconds",
    "Time to claim, produce and commit one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class DeliveryFailed(Exception):
    """The broker did not acknowledge every message of a batch; the batch is rolled back."""


#: Broker answers that no retry will change: the row is moved to `OutboxFailure` rather than
#: blocking every row behind it forever. Anything else (timeouts, broker down) rolls back and retries.
PERMANENT_ERRORS = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)
#: librdkafka waits `topic.metadata.propagation.max.ms` (30 s) for a topic it does not know before
#: failing the message; 5 s bounds how long one row with a wrong topic holds up a batch.
RELAY_PRODUCER_OVERRIDES: dict[str, Any] = {"topic.metadata.propagation.max.ms": 5000}
PARKED = Counter("outbox_failed_rows_total", "Rows the broker refused for good, moved to OutboxFailure")


@dataclass
class RelayConfig:
    conninfo: str
    producer_config: dict[str, Any]
    table: str = "notifications_outboxevent"
    failure_table: str = "notifications_outboxfailure"
    buckets: int = 64
    batch_size: int = 2000
    #: Bulk-lane rows per batch at most when the relay serves both lanes (priority rows are claimed
    #: first, up to batch_size); a bulk-only relay claims up to batch_size.
    bulk_batch_size: int = 500
    #: The lanes this relay serves: both by default; one per process lets the bulk lane's relay run
    #: at a lower CPU priority and never hold an urgent row behind a bulk batch.
    lanes: tuple[int, ...] = LANES
    poll_interval: float = 1.0
    flush_timeout: float = 30.0


class OutboxRelay:
    def __init__(
        self,
        config: RelayConfig,
        *,
        stop_event: threading.Event | None = None,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self.config = config
        self.stop_event = stop_event or threading.Event()
        self.producer = producer_factory(config.producer_config)
        self.conn: psycopg.Connection | None = None
        if not config.lanes or set(config.lanes) - set(LANES):
            raise ValueError(f"lanes must be a non-empty subset of {LANES}, not {config.lanes!r}")
        self.lanes = tuple(sorted(set(config.lanes)))
        self.application_name = f"{APPLICATION_NAME}/{''.join(map(str, self.lanes))}"
        self.owned: dict[int, set[int]] = {lane: set() for lane in self.lanes}
        self._last_rebalance = 0.0
        self._last_age = 0.0
        self._last_rows: list[tuple] = []
        self.outage = Outage("relay")

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> None:
        """Relay until `stop_event` is set; the batch in hand is always finished first."""
        log.info("relay started", extra={"buckets": self.config.buckets, "lanes": self.lanes})
        try:
            while not self.stop_event.is_set():
                HEARTBEAT.beat()  # /healthz: the loop is turning
                try:
                    self._turn()
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    # PostgreSQL away: the batch in hand rolled back with the session, and so went
                    # the bucket locks; reconnect (and take buckets again) after a backoff.
                    self._disconnect()
                    self.outage.wait("postgresql", exc, self.stop_event)
                else:
                    self.outage.recovered()
        finally:
            self.close()
            log.info("relay stopped")

    def _turn(self) -> None:
        if self.conn is None or self.conn.closed:
            self._connect()
        self._maybe_rebalance()
        self._maybe_report_age()
        relayed = self.relay_batch() if self.owned_count else 0
        if relayed < min(self.config.batch_size, self.config.bulk_batch_size):
            self._wait_for_work()

    def close(self) -> None:
        self.producer.flush(self.config.flush_timeout)
        self._disconnect()

    def _disconnect(self) -> None:
        if self.conn is not None and not self.conn.closed:
            try:
                self.conn.close()  # releases every advisory lock with the session
            except psycopg.Error:
                log.debug("closing the relay's connection failed", exc_info=True)
        self.conn = None
        for buckets in self.owned.values():
            buckets.clear()
        self._last_rebalance = 0.0
        OWNED_BUCKETS.set(0)

    def _connect(self) -> None:
        self.conn = psycopg.connect(self.config.conninfo, autocommit=True, application_name=self.application_name)
        share_cpu_priority(self.conn.info.backend_pid, self.conn.info.host)  # a bulk relay's session runs niced
        self.conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        # The claim must walk an index in id order. With statistics taken while the table was empty
        # the planner picks a bitmap scan plus a sort of the whole backlog per batch, which makes a
        # drain quadratic exactly when a spike built a backlog. Forbid those plans for this session.
        self.conn.execute("SET enable_sort = off")
        self.conn.execute("SET enable_bitmapscan = off")

    # -- bucket ownership ----------------------------------------------------------------------
    def _maybe_rebalance(self) -> None:
        now = time.monotonic()
        if now - self._last_rebalance >= REBALANCE_INTERVAL:
            self.rebalance()
            self._last_rebalance = now

    @property
    def owned_count(self) -> int:
        return sum(len(buckets) for buckets in self.owned.values())

    def rebalance(self) -> None:
        """Per lane, hold a fair share of its buckets: release extras, then take free ones up to the share."""
        assert self.conn is not None  # noqa: S101 - narrows the type: run() connects first
        for lane, owned in self.owned.items():
            live = self.conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND split_part(application_name, '/', 1) = %s"
                " AND strpos(split_part(application_name, '/', 2), %s) > 0",
                (APPLICATION_NAME, str(lane)),
            ).fetchone()[0]
            share = math.ceil(self.config.buckets / max(1, live))
            lock_class = ADVISORY_LOCK_CLASS + lane
            for bucket in sorted(owned, reverse=True)[: max(0, len(owned) - share)]:
                self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", (lock_class, bucket))
                owned.discard(bucket)
            for bucket in range(self.config.buckets):
                if len(owned) >= share:
                    break
                if bucket in owned:
                    continue
                if self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (lock_class, bucket)).fetchone()[0]:
                    owned.add(bucket)
        OWNED_BUCKETS.set(self.owned_count)

    # -- relaying --------------------------------------------------------------------------------
    def relay_batch(self) -> int:
        """Claim, produce and delete one batch. Returns the number of rows relayed."""
        assert self.conn is not None  # noqa: S101 - narrows the type: run() connects first
        started = time.perf_counter()
        # Each lane oldest first (per-key order holds within a lane); serving both lanes, at most
        # bulk_batch_size bulk rows per batch: a priority row committed meanwhile waits for a small
        # batch at most.
        claims, params = [], {}
        for lane, owned in self.owned.items():
            if not owned:
                continue
            buckets = "" if len(owned) == self.config.buckets else f"AND bucket = ANY(%(buckets{lane})s)"
            claims.append(
                f"ARRAY(SELECT ctid FROM {self.config.table} WHERE lane = {lane} {buckets}"  # noqa: S608 - config
                f" ORDER BY id LIMIT %(limit{lane})s FOR UPDATE SKIP LOCKED)"
            )
            params[f"buckets{lane}"] = sorted(owned)
            both = lane != PRIORITY_LANE and PRIORITY_LANE in self.owned
            params[f"limit{lane}"] = self.config.bulk_batch_size if both else self.config.batch_size
        sql = (
            f"DELETE FROM {self.config.table} WHERE ctid = ANY({' || '.join(claims)})"  # noqa: S608 - config
            " RETURNING id, topic, key, payload, headers, created_at, lane"
        )
        try:
            with self.conn.transaction():
                rows = self.conn.execute(sql, params).fetchall()
                if not rows:
                    return 0
                rows.sort(key=lambda r: (r[6], r[0]))  # RETURNING order is unspecified: lane, then oldest
                refused = self._produce_and_wait(rows)
                if refused:
                    self._move_to_failures(refused)
        except DeliveryFailed:
            RELAY_FAILURES.inc()
            log.exception("relay batch rolled back; its rows will be relayed again")
            self.stop_event.wait(1.0)
            return 0
        RELAYED.inc(len(rows))
        BATCH_SECONDS.observe(time.perf_counter() - started)
        return len(rows)

    def _produce_and_wait(self, rows: list[tuple]) -> dict[int, str]:
        """Produce every row and wait. Returns {row id: error} of rows refused for good; raises
        DeliveryFailed (→ rollback, retry) when any error is one a retry may cure."""
        errors: list[tuple[int, KafkaError]] = []
        failed: list[tuple[str, bytes | None, bytes | None, KafkaError]] = []

        # One callback for the batch (a closure per row costs more than the produce call itself);
        # failures are matched back to their rows only when there are any.
        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                failed.append((msg.topic(), msg.key(), msg.value(), err))

        producer, loads = self.producer, orjson.loads
        self._last_rows = rows
        for row_id, topic, key, payload, headers_json, _created, _lane in rows:
            headers = list(loads(headers_json).items()) if headers_json and headers_json != "{}" else None
            try:
                produce_with_retry(producer, topic, payload.encode(), key.encode(), headers, on_delivery)
            except KafkaException as exc:  # refused before queueing (e.g. invalid topic name)
                errors.append((row_id, exc.args[0]))
        remaining = self.producer.flush(self.config.flush_timeout)
        if failed:
            by_content = {(r[1], r[2].encode(), r[3].encode()): r[0] for r in rows}
            errors += [(by_content.get((t, k, v), -1), err) for t, k, v, err in failed]
        if remaining or any(err.code() not in PERMANENT_ERRORS for _, err in errors):
            raise DeliveryFailed(f"{len(errors)} delivery errors, {remaining} unacknowledged: {errors[:3]}")
        return {row_id: f"{err.name()}: {err.str()}"[:500] for row_id, err in errors}

    def _move_to_failures(self, refused: dict[int, str]) -> None:
        """Inside the batch's transaction: keep refused rows in the failure table (nothing is lost)."""
        assert self.conn is not None  # noqa: S101 - narrows the type: run() connects first
        self.conn.execute(
            f"INSERT INTO {self.config.failure_table} "  # noqa: S608 - table names are config
            "(original_id, topic, key, payload, headers, created_at, failed_at, error) "
            "SELECT (r->>'id')::bigint, r->>'topic', r->>'key', r->'payload', r->'headers', "
            "(r->>'created_at')::timestamptz, now(), r->>'error' FROM jsonb_array_elements(%s::jsonb) AS r",
            (orjson.dumps(self._failed_rows(refused)).decode(),),
        )
        PARKED.inc(len(refused))
        log.error(
            "outbox rows refused by the broker, moved to OutboxFailure",
            extra={"count": len(refused), "sample": next(iter(refused.values()))},
        )

    def _failed_rows(self, refused: dict[int, str]) -> list[dict[str, Any]]:
        rows = self._last_rows
        return [
            {
                "id": r[0],
                "topic": r[1],
                "key": r[2],
                "payload": orjson.loads(r[3]),
                "headers": orjson.loads(r[4]),
                "created_at": r[5].isoformat(),
                "error": refused[r[0]],
            }
            for r in rows
            if r[0] in refused
        ]

    # -- waiting -------------------------------------------------------------------------------
    def _wait_for_work(self) -> None:
        """Block until a NOTIFY arrives, the poll interval passes, or a stop is requested."""
        assert self.conn is not None  # noqa: S101 - narrows the type: run() connects first
        deadline = time.monotonic() + self.config.poll_interval
        while not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            # Short slices so SIGTERM is noticed quickly even while idle.
            for _ in self.conn.notifies(timeout=min(remaining, 0.25), stop_after=1):
                return

    def _maybe_report_age(self) -> None:
        now = time.monotonic()
        if now - self._last_age < OLDEST_AGE_INTERVAL:
            return
        self._last_age = now
        assert self.conn is not None  # noqa: S101 - narrows the type: run() connects first
        row = self.conn.execute(
            f"SELECT extract(epoch FROM now() - created_at) FROM {self.config.table} ORDER BY id LIMIT 1"  # noqa: S608
        ).fetchone()
        OLDEST_AGE.set(float(row[0]) if row else 0.0)


def conninfo_from_django(alias: str = "default") -> str:
    """A libpq connection string for the Django database `alias` (honours the test database)."""
    from django.db import connections

    params = connections[alias].get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")})
