"""DLQ triage throughput: N dead letters from Kafka → stored and categorised rows/s (loopback only).

    .venv/bin/python benchmarks/dlq_triage.py [--messages 100000] [--batch-size 1000] [--partitions 6]
                                              [--unknown-fingerprints 20] [--database bench_notifications]

What it does, step by step: benchmarks/README.md, "dlq_triage.py".
"""

import argparse
import contextlib
import os
import random
import shlex
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import orjson  # noqa: E402
import psycopg  # noqa: E402
from _common import CpuMeter, kafka_pids, log, migrate_bench_database, postgres_pids  # noqa: E402

SCRIPT = "benchmarks/dlq_triage.py"
DEFAULT_DATABASE_URL = "postgres://notif:notif@127.0.0.1:55432/notifications"
MAX_MESSAGES = 2_000_000
CHANNELS = ("email", "push", "sms", "inapp", "webhook")
WORDS = (
    "quartz",
    "nebula",
    "saffron",
    "tundra",
    "marble",
    "falcon",
    "cobalt",
    "lagoon",
    "ember",
    "willow",
    "zephyr",
    "basalt",
    "orchid",
    "glacier",
    "juniper",
    "canyon",
    "meteor",
    "harbor",
    "thistle",
    "obsidian",
)


# --- the dedicated database (before Django is set up) ---------------------------------------------
def use_bench_database(name: str) -> str:
    """Point DATABASE_URL at database `name` on the same server, creating it if missing."""
    base = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    parts = urlsplit(base)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to run against a non-loopback database host: {parts.hostname}")
    bench_url = base if parts.path.lstrip("/") == name else urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(base, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            log(f"creating database {name}")
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a concurrent run won
                conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = bench_url
    return bench_url


# --- the dead letters -----------------------------------------------------------------------------
#: (share, what) of the generated mix; `what` picks the headers and the category the rules must give.
MIX = (
    (0.35, "invalid_address"),
    (0.15, "invalid_payload"),
    (0.20, "provider_outage"),
    (0.10, "retries_exhausted"),
    (0.05, "provider_auth"),
    (0.10, "events"),
    (0.05, "unknown"),
)
PROVIDER = {"email": "sendgrid", "push": "fcm", "sms": "twilio", "inapp": "inapp", "webhook": "webhook"}


def channel_body(rng: random.Random, channel: str, n: int) -> dict:
    event_id = str(uuid.UUID(int=rng.getrandbits(128)))
    user_id = rng.randrange(1, 5_000_000)
    to = {
        "email": {"email": f"user{user_id}@example.com"},
        "push": {"platform": "fcm", "devices": [["fcm", f"tok-{rng.getrandbits(96):024x}"]]},
        "sms": {"phone": f"+49151{user_id:07d}"},
        "inapp": {"user_id": user_id},
        "webhook": {"url": f"https://hooks.example.com/orders/{user_id}"},
    }[channel]
    return {
        "v": 1,
        "id": f"{event_id}:{user_id}:{channel}",
        "event_id": event_id,
        "user_id": user_id,
        "channel": channel,
        "type": "order.shipped",
        "category": "transactional",
        "urgency": "normal",
        "priority": "transactional",
        "created_at": "2026-11-25T10:00:00+00:00",
        "locale": "en",
        "to": to,
        "content": {
            "subject": f"Your order A-{n} has shipped",
            "body": "Hello, your order is on its way with DHL. Expected: tomorrow. Track it: "
            f"https://t.example/{n}\nUnsubscribe: https://example.com/u/{user_id}",
            "html": f"<p>Hello, your order <b>A-{n}</b> is on its way with DHL.</p>",
        },
    }


def dead_letter(rng: random.Random, n: int, what: str, unknown_kinds: int, topic_prefix: str):
    """(topic, key, value, headers, expected category, unknown fingerprint label or None)."""
    from notifications.bus.dead_letters import dead_letter_headers

    now = time.time()
    if what == "events":
        if rng.random() < 0.5:
            value = b'{"v": 1, "id": "broken' + str(n).encode()  # undecodable JSON
            error_class, error = "invalid_json", "not JSON: unexpected end of data: line 1 column 30"
        else:
            event = {
                "v": 1,
                "id": str(uuid.UUID(int=rng.getrandbits(128))),
                "type": "order.refunded",
                "occurred_at": "2026-11-25T10:00:00+00:00",
                "recipient": str(rng.randrange(1, 5_000_000)),
                "data": {"order": f"A-{n}", "amount": "12.50"},
                "source": "shop",
            }
            value = orjson.dumps(event)
            error_class, error = "unknown_type", "unknown or disabled notification type 'order.refunded'"
        headers = dead_letter_headers(origin_topic=f"{topic_prefix}notif.events", error_class=error_class, error=error)
        return f"{topic_prefix}notif.events.dlq", b"k", value, headers, "invalid_payload", None
    # A new kind of failure happens on one channel (its fingerprint includes channel and provider).
    kind = rng.randrange(unknown_kinds) if what == "unknown" else 0
    channel = CHANNELS[kind % len(CHANNELS)] if what == "unknown" else rng.choice(CHANNELS)
    provider = PROVIDER[channel]
    body = channel_body(rng, channel, n)
    label = None
    if what == "invalid_address":
        error_class, history = "invalid_contact", [("invalid_contact", 400, "21211", "The 'To' number is not valid")]
    elif what == "invalid_payload":
        error_class, history = "permanent", [("permanent", 400, "http_400", "The content value must be a string")]
    elif what == "provider_outage":
        tries = rng.randint(3, 8)
        error_class = "max_attempts"
        history = [("transient", 503, "http_503", f"Service Unavailable (upstream {rng.randint(1, 9)})")] * tries
    elif what == "retries_exhausted":
        error_class, history = "max_age", [("rate_limited", 429, "too_many_requests", "Too many requests")] * 3
    elif what == "provider_auth":
        error_class = "max_attempts"
        history = [("config_error", 401, "http_401", "The provided authorization grant is invalid")] * 8
    else:  # unknown: a few new kinds of failure, each with varying numbers (alike within a kind)
        label = f"{WORDS[kind % len(WORDS)]}{kind // len(WORDS)}"
        error_class = f"novel_{WORDS[kind % len(WORDS)]}_{chr(97 + kind // len(WORDS) % 26)}"
        history = [(error_class, 500 + kind, "", f"{label} reactor overheated at {rng.randint(1, 999)} K")]
    errors = [
        {
            "at": round(now - 60 * (len(history) - i), 3),
            "provider": provider,
            "error_class": c,
            "status": s,
            "code": code,
            "message": msg,
        }
        for i, (c, s, code, msg) in enumerate(history)
    ]
    headers = dead_letter_headers(
        origin_topic=f"{topic_prefix}notif.{channel}",
        error_class=error_class,
        error=history[-1][3],
        idempotency_key=body["id"],
        attempt=len(history),
        first_attempt_at=errors[0]["at"],
        errors=errors,
        provider=provider,
    )
    return f"{topic_prefix}notif.{channel}.dlq", str(body["user_id"]).encode(), orjson.dumps(body), headers, what, label


def produce_dead_letters(n: int, seed: int, unknown_kinds: int, topic_prefix: str) -> tuple[Counter, set, float, int]:
    """Produce n dead letters (generated in a stream: bounded memory). Returns (expected categories,
    unknown fingerprint labels, seconds, bytes)."""
    from confluent_kafka import Producer

    from notifications.bus.config import producer_config
    from notifications.bus.producing import produce_with_retry

    rng = random.Random(seed)
    cumulative, acc = [], 0.0
    for share, what in MIX:
        acc += share
        cumulative.append((acc, what))
    producer = Producer(producer_config())
    errors: list = []
    expected: Counter = Counter()
    labels: set[str] = set()
    size = 0
    started = time.perf_counter()
    for i in range(n):
        draw = rng.random() * acc
        what = next(w for edge, w in cumulative if draw < edge)
        topic, key, value, headers, category, label = dead_letter(rng, i, what, unknown_kinds, topic_prefix)
        expected[category] += 1
        if label:
            labels.add(label)
        size += len(value) + sum(len(k) + len(v) for k, v in headers.items())
        produce_with_retry(producer, topic, value, key, headers, lambda err, _m: err and errors.append(err))
        if i % 20_000 == 0 and i:
            log(f"  produced {i:,}")
    if producer.flush(120) or errors:
        raise SystemExit(f"produce failed: {errors[:3]}")
    return expected, labels, time.perf_counter() - started, size


# --- the passes ---------------------------------------------------------------------------------
class PhaseTimer:
    """Wall time of the handler's own steps (wrapped in the triage module's namespace)."""

    def __init__(self) -> None:
        self.seconds: Counter = Counter()

    def install(self) -> None:
        from notifications.dlq import triage

        for name in ("categorise_entries", "store_dead_letters", "page_unknown_dead_letters"):
            original = getattr(triage, name)
            setattr(triage, name, self._timed(name, original))

    def _timed(self, name, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return wrapper


def run_pass(label: str, *, target: int, batch_size: int, timeout: float, pager, timer: PhaseTimer) -> dict:
    from django.db import connection

    from notifications.bus.runner import ConsumerRunner, RunnerConfig
    from notifications.dlq.triage import DlqTriageHandler

    handler = DlqTriageHandler(pager=pager)
    group = f"bench-triage-{label}-{uuid.uuid4().hex[:6]}"
    state = {"handled": 0, "first": None, "last": None, "handler_seconds": 0.0, "batches": 0}
    runner: ConsumerRunner

    class Counting:
        def handle_batch(self, messages):
            started = time.perf_counter()
            state["first"] = state["first"] or started
            handler.handle_batch(messages)
            state["last"] = time.perf_counter()
            state["handler_seconds"] += state["last"] - started
            state["handled"] += len(messages)
            state["batches"] += 1
            if state["handled"] >= target and not runner.stop_event.is_set():
                meter.stop()  # before the runner closes its database connection (its backend's CPU counts)
                runner.stop_event.set()

    runner = ConsumerRunner(
        RunnerConfig(role="dlq-triage", topics=list(handler.topics), group=group, batch_size=batch_size), Counting()
    )
    before = Counter(timer.seconds)
    meter = CpuMeter({"triage (this process)": lambda: [os.getpid()], "postgres": postgres_pids, "kafka": kafka_pids})
    thread = threading.Thread(target=runner.run, daemon=True)
    meter.start()
    thread.start()
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while thread.is_alive() and time.monotonic() < deadline:
        thread.join(0.5)
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            log(f"  {label}: {state['handled']:,} / {target:,}")
    if not runner.stop_event.is_set():  # timed out: measure what was done
        meter.stop()
    runner.stop_event.set()
    thread.join(60)
    connection.close()
    span = (state["last"] - state["first"]) if state["first"] else 0.0
    phases = {k: timer.seconds[k] - before.get(k, 0.0) for k in timer.seconds}
    return {
        "label": label,
        "group": group,
        "handled": state["handled"],
        "complete": state["handled"] >= target,
        "span": span,
        "handler_seconds": state["handler_seconds"],
        "batches": state["batches"],
        "phases": phases,
        "cpu": meter.summary(),
        "cpu_seconds": dict(meter.used),
        "other_share": meter.other_share,
    }


def category_counts(topic_prefix: str) -> Counter:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT category, count(*) FROM notifications_deadletter WHERE dlq_topic LIKE %s GROUP BY 1",
            [f"{topic_prefix}%"],
        )
        return Counter(dict(cur.fetchall()))


def row_digest(topic_prefix: str) -> tuple:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*), max(updated_at), sum(failure_count), count(*) FILTER (WHERE paged_at IS NOT NULL),"
            " count(DISTINCT fingerprint) FILTER (WHERE category = 'unknown')"
            " FROM notifications_deadletter WHERE dlq_topic LIKE %s",
            [f"{topic_prefix}%"],
        )
        return cur.fetchone()


# --- main -----------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--unknown-fingerprints", type=int, default=20)
    parser.add_argument("--database", default="bench_notifications")
    parser.add_argument("--timeout", type=float, default=600.0, help="Seconds per pass before giving up.")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if not 1 <= args.messages <= MAX_MESSAGES:
        parser.error(f"--messages must be between 1 and {MAX_MESSAGES:,}")
    return args


def reproduce_command(args) -> str:
    parts = [
        ".venv/bin/python",
        SCRIPT,
        "--messages",
        str(args.messages),
        "--batch-size",
        str(args.batch_size),
        "--partitions",
        str(args.partitions),
        "--unknown-fingerprints",
        str(args.unknown_fingerprints),
    ]
    if args.database != "bench_notifications":
        parts += ["--database", args.database]
    if args.seed != 7:
        parts += ["--seed", str(args.seed)]
    return shlex.join(parts)


def main() -> int:
    args = parse_args()
    run = uuid.uuid4().hex[:8]
    topic_prefix, redis_prefix = f"benchdlq{run}.", f"benchdlq{run}:"
    use_bench_database(args.database)
    os.environ.update(
        {
            "KAFKA_TOPIC_PREFIX": topic_prefix,
            "REDIS_KEY_PREFIX": redis_prefix,
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        }
    )

    import django

    django.setup()
    from django.conf import settings

    settings.KAFKA_TOPIC_PREFIX = topic_prefix
    settings.REDIS_KEY_PREFIX = redis_prefix
    settings.KAFKA_DEFAULT_PARTITIONS = args.partitions
    db_name = settings.DATABASES["default"]["NAME"]
    assert db_name == args.database, f"refusing to run on database {db_name!r}"

    from confluent_kafka.admin import AdminClient

    from notifications.bus.config import admin_config
    from notifications.bus.kafka_admin import delete_topics_with_prefix, ensure_topics
    from notifications.bus.topics import TopicSpec
    from notifications.dlq.paging import Pager
    from notifications.redis_client import get_redis

    log(f"run {run}: database {db_name}, topic prefix {topic_prefix}, redis prefix {redis_prefix}")
    migrate_bench_database()
    ensure_topics(specs=[TopicSpec(f"{c}.dlq") for c in (*CHANNELS, "events")])
    redis_client = get_redis()
    pager = Pager(redis_client=redis_client, key_prefix=redis_prefix, window_seconds=3600)
    groups: list[str] = []
    try:
        log(f"producing {args.messages:,} dead letters ...")
        expected, labels, produce_seconds, size = produce_dead_letters(
            args.messages, args.seed, args.unknown_fingerprints, topic_prefix
        )
        log(f"produced in {produce_seconds:.1f}s ({args.messages / produce_seconds:,.0f}/s, {size / 1e6:.0f} MB)")
        timer = PhaseTimer()
        timer.install()

        log("first pass ...")
        first = run_pass(
            "first", target=args.messages, batch_size=args.batch_size, timeout=args.timeout, pager=pager, timer=timer
        )
        groups.append(first["group"])
        stored = category_counts(topic_prefix)
        digest = row_digest(topic_prefix)
        log(f"first: {first['handled']:,} in {first['span']:.1f}s")

        log("redelivery pass (new consumer group: every row already stored) ...")
        again = run_pass(
            "redelivery",
            target=args.messages,
            batch_size=args.batch_size,
            timeout=args.timeout,
            pager=pager,
            timer=timer,
        )
        groups.append(again["group"])
        digest_after = row_digest(topic_prefix)

        checks = {
            "every message is one row": digest[0] == args.messages,
            "categories as the generator expects": stored == expected,
            "one page per unknown fingerprint": digest[3] == digest[4] == len(labels),
            "redelivery changed nothing": digest_after == digest,
        }
        print_report(args, first, again, expected, stored, digest, labels, produce_seconds, size, checks)
        return 0 if first["complete"] and again["complete"] and all(checks.values()) else 1
    finally:
        cleanup(
            topic_prefix,
            redis_client,
            redis_prefix,
            groups,
            delete_topics_with_prefix,
            AdminClient(admin_config()),
            settings,
        )


def cleanup(topic_prefix, redis_client, redis_prefix, groups, delete_topics, admin, settings) -> None:
    from django.db import connection, connections

    log("cleaning up ...")
    connections.close_all()
    try:
        with connection.cursor() as cur:
            cur.execute("DELETE FROM notifications_deadletter WHERE dlq_topic LIKE %s", [f"{topic_prefix}%"])
    except Exception as exc:  # keep going: topics and keys must still go
        log(f"database clean-up failed: {exc!r}")
    with contextlib.suppress(Exception):
        keys = list(redis_client.scan_iter(match=f"{redis_prefix}*", count=10_000))
        if keys:
            redis_client.delete(*keys)
    with contextlib.suppress(Exception):
        delete_topics(topic_prefix)
    if groups:
        full = [f"{settings.KAFKA_CONSUMER_GROUP_PREFIX}.{topic_prefix}{g}" for g in groups]
        with contextlib.suppress(Exception):
            for future in admin.delete_consumer_groups(full, request_timeout=10).values():
                with contextlib.suppress(Exception):
                    future.result()
    log("clean-up done")


def print_report(args, first, again, expected, stored, digest, labels, produce_seconds, size, checks) -> None:
    n = args.messages
    print()
    print(
        f"DLQ triage: one triage process, {n:,} dead letters ({size / n:,.0f} B avg incl. headers), batch size "
        f"{args.batch_size}, {args.partitions} partitions per DLQ topic, {os.cpu_count()} CPU cores"
    )
    print(f"  produced at {n / produce_seconds:,.0f}/s (not part of the figures below)")
    print()
    print(f"  {'pass':<11} {'messages':>9} {'seconds':>8} {'rows/s':>9} {'batches':>8}  phases (handler wall time)")
    for r in (first, again):
        rate = r["handled"] / r["span"] if r["span"] else 0.0
        phases = r["phases"]
        parse = r["handler_seconds"] - sum(phases.values())
        split = (
            f"parse {parse:.1f}s, categorise {phases.get('categorise_entries', 0):.1f}s, "
            f"INSERT…ON CONFLICT {phases.get('store_dead_letters', 0):.1f}s, "
            f"paging {phases.get('page_unknown_dead_letters', 0):.1f}s; "
            f"outside the handler (poll/commit) {r['span'] - r['handler_seconds']:.1f}s"
        )
        print(f"  {r['label']:<11} {r['handled']:>9,} {r['span']:>8.1f} {rate:>9,.0f} {r['batches']:>8}  {split}")
        print(f"  {'':<11} CPU: {r['cpu']}")
        per_row = {
            k: v / r["handled"] * 1e6 for k, v in r["cpu_seconds"].items() if r["handled"] and k != "other processes"
        }
        print(f"  {'':<11} CPU per row: " + ", ".join(f"{k} {v:.0f} µs" for k, v in per_row.items()))
        if r["other_share"] > 0.25:
            print(f"  {'':<11} WARNING: other processes used {r['other_share']:.0%} of a core: figures are depressed")
    print()
    print("  stored per category (expected):")
    for category in sorted(expected):
        print(f"    {category:<18} {stored.get(category, 0):>9,} ({expected[category]:,})")
    print(f"  unknown fingerprints: {digest[4]} (generated {len(labels)}); pages sent: {digest[3]}")
    print()
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    print()
    print(f"Reproduce: {reproduce_command(args)}")


if __name__ == "__main__":
    sys.exit(main())
