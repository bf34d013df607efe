"""Outbox relay throughput vs. a raw Kafka producer, on the local services (loopback only).

    .venv/bin/python benchmarks/relay_throughput.py [--events 200000] [--batch-size 2000]
        [--relays 0] [--payload-bytes 1024] [--repeat 1] [--stats asis|empty|fresh]

What it does, step by step: benchmarks/README.md, "relay_throughput.py".
"""

import argparse
import os
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402
import psycopg  # noqa: E402
from _common import CpuMeter, kafka_pids, log, postgres_pids, require_migrated  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from django.conf import settings  # noqa: E402

from notifications.bus.config import producer_config  # noqa: E402
from notifications.bus.kafka_admin import delete_topics_with_prefix, ensure_topics  # noqa: E402
from notifications.bus.producing import produce_with_retry  # noqa: E402
from notifications.bus.topics import TopicSpec  # noqa: E402
from notifications.models import bucket_for_key  # noqa: E402
from notifications.outbox.relay import (  # noqa: E402
    ADVISORY_LOCK_CLASS,
    APPLICATION_NAME,
    OutboxRelay,
    RelayConfig,
    conninfo_from_django,
)

TABLE = "notifications_outboxevent"
RELAY_SESSIONS = APPLICATION_NAME + "/%"  # a relay's sessions, whatever lanes it serves
SCRIPT = "benchmarks/relay_throughput.py"
WORDS = [
    "your",
    "order",
    "has",
    "shipped",
    "and",
    "will",
    "arrive",
    "tomorrow",
    "between",
    "nine",
    "and",
    "five",
    "please",
    "check",
    "the",
    "tracking",
    "link",
    "for",
    "details",
    "thank",
    "you",
    "for",
    "shopping",
    "with",
    "us",
    "again",
    "soon",
    "account",
    "security",
    "alert",
    "new",
    "sign",
    "in",
    "from",
    "a",
    "device",
    "we",
    "did",
    "not",
    "recognise",
    "if",
    "this",
    "was",
    "you",
    "no",
    "action",
    "is",
    "needed",
    "otherwise",
    "reset",
    "password",
    "weekly",
    "digest",
    "three",
    "new",
    "comments",
    "on",
    "your",
    "post",
    "reply",
    "invoice",
    "payment",
    "received",
    "receipt",
    "attached",
]


# --- helpers ------------------------------------------------------------------------------------
def make_corpus(size: int, rng) -> str:
    out, n = [], 0
    while n < size:
        w = WORDS[rng.randrange(len(WORDS))]
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def build_messages(n: int, users: int, payload_bytes: int, seed: int = 42):
    """N (key, value bytes, headers dict) shaped like the ingest API's outbox rows (an event envelope)."""
    import random

    rng = random.Random(seed)
    corpus = make_corpus(4 * 1024 * 1024, rng)
    occurred = datetime.now(UTC).isoformat()
    pad_len = None
    msgs = []
    for i in range(n):
        key = str(1_000_000 + rng.randrange(users))
        pid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        envelope = {
            "v": 1,
            "id": pid,
            "type": "bench.event",
            "occurred_at": occurred,
            "recipient": key,
            "data": {"seq": i, "text": ""},
            "source": "bench",
            "producer_event_id": f"bench-{i}",
        }
        if pad_len is None:
            pad_len = max(0, payload_bytes - len(orjson.dumps(envelope)))
        off = rng.randrange(len(corpus) - pad_len - 1)
        envelope["data"]["text"] = corpus[off : off + pad_len]
        msgs.append((key, orjson.dumps(envelope), {"idempotency-key": f"{pid}:{key}", "event-type": "bench.event"}))
    return msgs


def copy_into_outbox(
    conninfo: str, topic: str, msgs, plan_buckets: list[int], limit: int
) -> tuple[float, int, int, str]:
    """COPY the messages into the outbox in one transaction.

    Returns (seconds for COPY and commit, min id, max id, the claim plan just before the commit).
    """
    now = datetime.now(UTC)
    with psycopg.connect(conninfo, application_name="bench_relay_copy") as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy(f"COPY {TABLE} (topic, key, bucket, payload, headers, created_at) FROM STDIN") as copy:
                for key, value, headers in msgs:
                    headers_json = orjson.dumps(headers).decode()
                    copy.write_row((topic, key, bucket_for_key(key), value.decode(), headers_json, now))
            copied = time.perf_counter() - t0
            # Not timed: the run's id range (the end-of-relay check probes it through the primary key)
            # and the plan the relays will get (it depends on table statistics, not on visibility).
            cur.execute(f"SELECT min(id), max(id) FROM {TABLE} WHERE topic = %s", (topic,))
            lo, hi = cur.fetchone()
            plan = claim_plan(conn, plan_buckets, limit)
        t1 = time.perf_counter()
        conn.commit()
        return copied + time.perf_counter() - t1, lo, hi, plan


def watermark_total(consumer: Consumer, topic: str, partitions: int) -> int:
    total = 0
    for p in range(partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        total += high - low
    return total


def consume_check(topic: str, partitions: int, expected: int, timeout: float = 120.0) -> tuple[int, int, int]:
    """Read the whole topic (assign, no group commits). Returns (messages, distinct seqs, order violations)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
            "group.id": f"{settings.KAFKA_TOPIC_PREFIX}verify",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    last: dict[bytes, int] = {}
    seen: set[int] = set()
    count = violations = 0
    deadline = time.monotonic() + timeout
    try:
        while count < expected and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, timeout=1.0):
                if msg.error():
                    continue
                count += 1
                seq = orjson.loads(msg.value())["data"]["seq"]
                seen.add(seq)
                key = msg.key()
                if last.get(key, -1) >= seq:
                    violations += 1
                last[key] = seq
    finally:
        consumer.close()
    return count, len(seen), violations


class TimedProducer:
    """A Producer proxy that adds up the time spent in flush() (produce/poll are the real methods)."""

    def __init__(self, config):
        self._p = Producer(config)
        self.produce = self._p.produce
        self.poll = self._p.poll
        self.flush_seconds = 0.0

    def flush(self, *args):
        t0 = time.perf_counter()
        try:
            return self._p.flush(*args)
        finally:
            self.flush_seconds += time.perf_counter() - t0

    def __len__(self):
        return len(self._p)


# --- relays ---------------------------------------------------------------------------------------
class InProcessRelay:
    """One OutboxRelay in a thread, with per-phase timers around its real methods."""

    def __init__(self, conninfo: str, batch_size: int) -> None:
        self.relay = OutboxRelay(
            RelayConfig(
                conninfo=conninfo,
                producer_config=producer_config(),
                buckets=settings.OUTBOX_BUCKETS,
                batch_size=batch_size,
                poll_interval=settings.OUTBOX_POLL_INTERVAL,
            ),
            producer_factory=TimedProducer,
        )
        self.gate = threading.Event()
        self.gate.set()
        self.batches = 0
        self.batch_seconds = 0.0
        self.produce_seconds = 0.0  # produce() loop + flush wait
        relay_batch, produce_and_wait = self.relay.relay_batch, self.relay._produce_and_wait

        def timed_relay_batch():
            self.gate.wait()  # closed by pause(): the relay waits here, outside any transaction
            t0 = time.perf_counter()
            try:
                return relay_batch()
            finally:
                self.batches += 1
                self.batch_seconds += time.perf_counter() - t0

        def timed_produce_and_wait(rows):
            t0 = time.perf_counter()
            try:
                return produce_and_wait(rows)
            finally:
                self.produce_seconds += time.perf_counter() - t0

        self.relay.relay_batch = timed_relay_batch
        self.relay._produce_and_wait = timed_produce_and_wait
        self.thread = threading.Thread(target=self.relay.run, name="relay", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def warm_up(self, topic: str) -> None:
        """Fetch the topic's metadata now, as a long-running relay would already have it."""
        self.relay.producer._p.list_topics(topic, timeout=10)

    def ready(self) -> bool:
        return self.relay.owned_count == settings.OUTBOX_BUCKETS * len(self.relay.lanes)

    def pause(self) -> None:
        self.gate.clear()

    def resume(self) -> None:
        self.gate.set()

    def reset_timers(self) -> None:
        self.batches, self.batch_seconds, self.produce_seconds = 0, 0.0, 0.0
        self.relay.producer.flush_seconds = 0.0

    def pids(self) -> list[int]:
        return [os.getpid()]

    def stop(self) -> None:
        self.relay.stop_event.set()
        self.gate.set()
        if self.thread.is_alive():
            self.thread.join(timeout=60)


class SubprocessRelays:
    """K `manage.py relay_outbox` processes (they share the buckets through advisory locks)."""

    def __init__(self, k: int, batch_size: int, conninfo: str) -> None:
        self.k, self.batch_size, self.conninfo = k, batch_size, conninfo
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        env = dict(os.environ, KAFKA_TOPIC_PREFIX=settings.KAFKA_TOPIC_PREFIX, METRICS_PORT="0", LOG_LEVEL="WARNING")
        cmd = [sys.executable, str(REPO / "manage.py"), "relay_outbox", "--batch-size", str(self.batch_size)]
        for _ in range(self.k):
            self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=env))

    def ready(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"relay subprocess {p.pid} exited with {p.returncode}")
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            held = conn.execute(
                "SELECT a.pid, count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.classid = %s AND a.application_name LIKE %s GROUP BY a.pid",
                (ADVISORY_LOCK_CLASS, RELAY_SESSIONS),
            ).fetchall()
        share = -(-settings.OUTBOX_BUCKETS // self.k)
        counts = [c for _, c in held]
        return len(counts) == self.k and sum(counts) == settings.OUTBOX_BUCKETS and max(counts) <= share

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def pause(self) -> None:
        """SIGSTOP the relays while all their sessions are idle (a stopped open transaction would pin the xmin)."""
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            for _ in range(500):
                for p in self.procs:
                    p.send_signal(signal.SIGSTOP)
                busy = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s AND state <> 'idle'",
                    (RELAY_SESSIONS,),
                ).fetchone()[0]
                if not busy:
                    return
                self.resume()
                time.sleep(0.01)
        raise RuntimeError("could not catch the relays idle")

    def resume(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)  # in case pause() stopped it
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# --- raw producer -------------------------------------------------------------------------------------
def raw_produce(topic: str, msgs, flush_every: int | None = None) -> float:
    producer = Producer(producer_config())
    errors = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    producer.list_topics(topic, timeout=10)  # warm up: connection and metadata, like a running relay
    t0 = time.perf_counter()
    for i, (key, value, headers) in enumerate(msgs, 1):
        produce_with_retry(producer, topic, value, key.encode(), headers, on_delivery)
        if flush_every and i % flush_every == 0:
            producer.flush(30)
    remaining = producer.flush(60)
    elapsed = time.perf_counter() - t0
    if remaining or errors:
        raise RuntimeError(f"raw producer: {len(errors)} errors, {remaining} unflushed: {errors[:3]}")
    return elapsed


# --- main ---------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="outbox rows / messages (default 200000)")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=settings.OUTBOX_BATCH_SIZE,
        help="relay batch size (default: OUTBOX_BATCH_SIZE)",
    )
    ap.add_argument(
        "--relays", type=int, default=0, help="0: one in-process OutboxRelay (default); K>0: K relay_outbox processes"
    )
    ap.add_argument("--payload-bytes", type=int, default=1024, help="JSON payload size (default 1024)")
    ap.add_argument("--users", type=int, default=10_000, help="distinct keys (default 10000)")
    ap.add_argument("--partitions", type=int, default=settings.KAFKA_DEFAULT_PARTITIONS, help="partitions per topic")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up on the relay after this many seconds")
    ap.add_argument(
        "--stats",
        choices=("asis", "empty", "fresh"),
        default="asis",
        help="outbox planner statistics for each run: asis (whatever autoanalyze left, default); empty (ANALYZE\n"
        "a just-drained outbox before the COPY - pages but no live rows, as autoanalyze often sees it in normal\n"
        "operation - so the planner expects 1 row); fresh (pause the relays, COPY, ANALYZE, resume; the clock\n"
        "starts at the resume)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="repeat COPY+relay+raw this often; medians are shown")
    ap.add_argument("--no-consume-check", action="store_true", help="verify by high watermarks only")
    return ap.parse_args()


def reproduce_command(args: argparse.Namespace) -> str:
    parts = [
        ".venv/bin/python",
        SCRIPT,
        "--events",
        args.events,
        "--batch-size",
        args.batch_size,
        "--relays",
        args.relays,
        "--payload-bytes",
        args.payload_bytes,
        "--users",
        args.users,
        "--partitions",
        args.partitions,
        "--repeat",
        args.repeat,
        "--stats",
        args.stats,
    ]
    if args.no_consume_check:
        parts.append("--no-consume-check")
    return " ".join(shlex.quote(str(p)) for p in parts)


def preflight(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        (rows,) = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        (relays,) = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s AND datname = current_database()",
            (RELAY_SESSIONS,),
        ).fetchone()
    if rows:
        sys.exit(f"refusing to run: {TABLE} holds {rows} rows; the benchmark needs an empty outbox")
    if relays:
        sys.exit(f"refusing to run: {relays} other relay_outbox session(s) are connected to the database")


TABLE_STATS = (
    "seq_scan",
    "seq_tup_read",
    "idx_scan",
    "idx_tup_fetch",
    "n_dead_tup",
    "autovacuum_count",
    "autoanalyze_count",
)


def table_stats(conninfo: str) -> dict[str, int]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT {', '.join(TABLE_STATS)} FROM pg_stat_user_tables WHERE relname = %s", (TABLE,)
        ).fetchone()
    return dict(zip(TABLE_STATS, row, strict=True))


def claim_plan(conn: psycopg.Connection, buckets: list[int], limit: int = 2000) -> str:
    """The plan PostgreSQL picks now for the relay's claim subquery (EXPLAIN only, nothing runs)."""
    where = "" if len(buckets) == settings.OUTBOX_BUCKETS else "WHERE bucket = ANY(%(buckets)s)"
    sql = f"EXPLAIN (FORMAT JSON) SELECT id FROM {TABLE} {where} ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED"
    plan = conn.execute(sql, {"buckets": buckets, "limit": limit}).fetchone()[0][0]["Plan"]
    nodes = []
    while plan:
        nodes.append(plan["Node Type"] + (f" {plan['Index Name']}" if "Index Name" in plan else ""))
        plan = (plan.get("Plans") or [None])[0]
    return " > ".join(nodes)


def analyze_outbox(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"ANALYZE {TABLE}")


def analyze_drained_outbox(conninfo: str, topic: str, msgs) -> None:
    """Leave the statistics autoanalyze records right after a drain, before VACUUM truncates the table.

    Rows inserted and deleted in one transaction are never visible to the relays, but leave pages with
    no live tuple: ANALYZE then stores reltuples = 0 with relpages > 0, and the planner estimates the
    next backlog, however large, at one row.
    """
    with psycopg.connect(conninfo, application_name="bench_relay_copy") as conn:
        with conn.cursor() as cur:
            with cur.copy(f"COPY {TABLE} (topic, key, bucket, payload, headers, created_at) FROM STDIN") as copy:
                now = datetime.now(UTC)
                for key, value, _headers in msgs:
                    copy.write_row((topic, key, bucket_for_key(key), value.decode(), "{}", now))
            cur.execute(f"DELETE FROM {TABLE} WHERE topic = %s", (topic,))
        conn.commit()
    analyze_outbox(conninfo)


def wait_relayed(
    relays, wm: Consumer, conninfo: str, topic: str, partitions: int, n: int, lo: int, hi: int, timeout: float
) -> None:
    """Until the topic holds n messages and the outbox none of the rows lo..hi (probed via the pkey)."""
    deadline = time.monotonic() + timeout
    while watermark_total(wm, topic, partitions) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the relay")
        if isinstance(relays, SubprocessRelays) and any(p.poll() is not None for p in relays.procs):
            raise RuntimeError("a relay subprocess died")
        time.sleep(0.05)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        sql = f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE id BETWEEN %s AND %s)"
        while conn.execute(sql, (lo, hi)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise RuntimeError("timed out waiting for the outbox to empty")
            time.sleep(0.01)


def main() -> int:
    args = parse_args()
    require_migrated()
    n = args.events
    prefix = f"bench-relay-{secrets.token_hex(4)}-"
    settings.KAFKA_TOPIC_PREFIX = prefix
    relay_specs = [
        TopicSpec(f"bench.relay.{r}", retention_ms=3600_000, partitions=args.partitions) for r in range(args.repeat)
    ]
    raw_spec = TopicSpec("bench.raw", retention_ms=3600_000, partitions=args.partitions)
    conninfo = conninfo_from_django()
    preflight(conninfo)
    print(f"topic prefix {prefix}  ·  {os.cpu_count()} CPU cores shared by the relay, PostgreSQL and Kafka", flush=True)

    log(f"building {n} messages of ~{args.payload_bytes} B over {args.users} keys")
    msgs = build_messages(n, args.users, args.payload_bytes)
    value_bytes = sum(len(v) for _, v, _ in msgs)

    in_process = args.relays == 0
    relays = (
        InProcessRelay(conninfo, args.batch_size)
        if in_process
        else SubprocessRelays(args.relays, args.batch_size, conninfo)
    )
    results: dict[str, list[float]] = {"copy": [], "relay": [], "raw": [], "raw_flush_batch": []}
    notes: list[str] = []
    verify: dict[str, object] = {}
    try:
        ensure_topics(specs=[*relay_specs, raw_spec])
        relays.start()
        deadline = time.monotonic() + 60
        while not relays.ready():
            if time.monotonic() > deadline:
                raise RuntimeError("relays did not take the buckets within 60 s")
            time.sleep(0.1)
        log(f"relay(s) ready ({'in-process' if in_process else f'{args.relays} subprocesses'})")
        wm = Consumer({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "group.id": f"{prefix}wm"})
        for rep, spec in enumerate(relay_specs, 1):
            topic = spec.full_name
            if in_process:
                relays.warm_up(topic)
            log(f"run {rep}/{args.repeat}: COPY {n} rows, relay them")
            stats_before = table_stats(conninfo)
            share = -(-settings.OUTBOX_BUCKETS // max(1, args.relays))
            if args.stats == "empty":
                analyze_drained_outbox(conninfo, f"{prefix}drained", msgs[:20_000])
            elif args.stats == "fresh":
                relays.pause()
            copy_s, lo, hi, plan_start = copy_into_outbox(conninfo, topic, msgs, list(range(share)), args.batch_size)
            if args.stats == "fresh":
                analyze_outbox(conninfo)
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    plan_start = claim_plan(conn, list(range(share)), args.batch_size)
                relays.resume()
            t_commit = time.perf_counter()
            if in_process:
                relays.reset_timers()  # anything before the commit was idle waiting
            meter = CpuMeter({"relay": relays.pids, "postgres": postgres_pids, "kafka": kafka_pids})
            meter.start()
            wait_relayed(relays, wm, conninfo, topic, args.partitions, n, lo, hi, args.timeout)
            relay_s = time.perf_counter() - t_commit
            meter.stop()
            with psycopg.connect(conninfo, autocommit=True) as conn:
                plan_end = claim_plan(conn, list(range(share)), args.batch_size)
            time.sleep(1.1)  # backends flush table statistics at most once a second
            delta = {k: v - stats_before[k] for k, v in table_stats(conninfo).items()}
            results["copy"].append(copy_s)
            notes.append(f"run {rep}: claim plan ({share} buckets) at start: {plan_start}")
            if plan_end != plan_start:
                notes.append(f"run {rep}: claim plan at the end: {plan_end}")
            notes.append(
                f"run {rep}: outbox table during COPY+relay: seq scans +{delta['seq_scan']} "
                f"({delta['seq_tup_read']:,} tuples read), index scans +{delta['idx_scan']} "
                f"({delta['idx_tup_fetch']:,} fetched), autovacuum +{delta['autovacuum_count']}, "
                f"autoanalyze +{delta['autoanalyze_count']}"
            )
            results["relay"].append(relay_s)
            notes.append(f"run {rep}: CPU while relaying: {meter.summary()}")
            if meter.other_share > 0.15:
                notes.append(
                    f"  WARNING: other processes used {meter.other_share:.0%} of a core during run {rep}; "
                    "its figures are depressed - rerun on a quiet machine"
                )
            if in_process:
                r = relays
                fl = r.relay.producer.flush_seconds
                notes.append(
                    f"run {rep}: relay time {relay_s:.2f}s = claim (DELETE…RETURNING+fetch)+commit "
                    f"{r.batch_seconds - r.produce_seconds:.2f}s + produce() loop {r.produce_seconds - fl:.2f}s "
                    f"+ flush wait {fl:.2f}s + other {max(0.0, relay_s - r.batch_seconds):.2f}s "
                    f"({r.batches} batch calls)"
                )
            verify[f"run {rep} relay watermarks"] = watermark_total(wm, topic, args.partitions)
            log(f"run {rep}/{args.repeat}: relayed in {relay_s:.2f}s; raw producer")
            results["raw"].append(raw_produce(raw_spec.full_name, msgs))
            results["raw_flush_batch"].append(raw_produce(raw_spec.full_name, msgs, flush_every=args.batch_size))
        verify["raw watermarks"] = watermark_total(wm, raw_spec.full_name, args.partitions)
        wm.close()
        relays.stop()
        if not args.no_consume_check:
            for rep, spec in enumerate(relay_specs, 1):
                log(f"consuming {spec.full_name} to check count, duplicates and per-key order")
                count, distinct, violations = consume_check(spec.full_name, args.partitions, n)
                verify[f"run {rep} consumed/distinct/order violations"] = f"{count}/{distinct}/{violations}"
    finally:
        relays.stop()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            deleted = conn.execute(f"DELETE FROM {TABLE} WHERE topic LIKE %s", (prefix + "%",)).rowcount
        dropped = delete_topics_with_prefix(prefix)
        log(f"cleanup: deleted {deleted} leftover outbox rows, {len(dropped)} topics")

    ok = verify.get("raw watermarks") == 2 * n * args.repeat and all(
        v == n if k.endswith("watermarks") and k.startswith("run") else v == f"{n}/{n}/0" if "consumed" in k else True
        for k, v in verify.items()
    )
    med = {k: statistics.median(v) for k, v in results.items()}
    mb = value_bytes / 1e6
    mode = "in-process OutboxRelay" if in_process else f"{args.relays} x manage.py relay_outbox"
    print()
    print(
        f"Outbox relay throughput: {n} events, ~{value_bytes // n} B JSON payload, {args.users} keys, "
        f"{args.partitions} partitions, batch {args.batch_size}, {mode}, {args.repeat} run(s) (median; min-max)"
    )
    width = 96
    print(f"{'measurement':<42}{'seconds':>9}{'events/s':>11}{'MB/s':>7}   {'events/s min-max':>20}")
    print("-" * width)
    rows = [
        ("COPY into outbox (1 txn, incl. commit)", "copy"),
        ("relay: commit -> outbox empty", "relay"),
        ("raw producer, one flush at the end", "raw"),
        (f"raw producer, flush every {args.batch_size}", "raw_flush_batch"),
    ]
    for label, key in rows:
        rates = [n / s for s in results[key]]
        print(
            f"{label:<42}{med[key]:>9.2f}{n / med[key]:>11,.0f}{mb / med[key]:>7.1f}   "
            f"{min(rates):>9,.0f}-{max(rates):,.0f}"
        )
    print("-" * width)
    ratios = [raw / rel for rel, raw in zip(results["relay"], results["raw"], strict=True)]
    ratio = med["raw"] / med["relay"]
    print(
        f"relay / raw ceiling = {ratio:.0%} of medians ({'meets' if ratio >= 0.5 else 'misses'} the >= 50% target); "
        f"per run {', '.join(f'{x:.0%}' for x in ratios)}; "
        f"relay / raw-with-flush-per-batch = {med['raw_flush_batch'] / med['relay']:.0%}"
    )
    for line in notes:
        print(line)
    print("verification: " + ", ".join(f"{k} {v}" for k, v in verify.items()) + f"  -> {'OK' if ok else 'FAILED'}")
    print(f"reproduce: {reproduce_command(args)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
