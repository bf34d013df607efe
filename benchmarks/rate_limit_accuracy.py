"""Rate-limit accuracy of the global token bucket, and worker send throughput (loopback only).

    .venv/bin/python benchmarks/rate_limit_accuracy.py [--messages 20000] [--rate 500] [--burst 5]
                                                       [--workers 1,4,16] [--variants open,contract]
                                                       [--throughput-rows 0:200,0:500,100:200,100:500]

Issue targets, per worker count (1, 4, 16 `manage.py run_worker --channel sms` processes sharing
one `Provider` row `twilio` with rate R and burst B):

* the largest number of requests the provider saw in any 1 s window, divided by R: <= 1.01;
* utilisation = accepted / (R x busy seconds) while the backlog lasted: >= 0.97;
* 429s received: 0, also when the provider's own contract is exactly R (variant `contract`);
* duplicates: 0;

and, without a limit (Provider rate 100,000), >= 1,000 sends/s per worker process at 100 ms provider
latency, through concurrency (WORKER_CONCURRENCY bounds in-flight sends).

What it does, step by step: benchmarks/README.md, "rate_limit_accuracy.py".
"""

import argparse
import contextlib
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import orjson  # noqa: E402
import psycopg  # noqa: E402
from _common import (  # noqa: E402
    CpuMeter,
    code_version,
    delete_redis_prefix,
    exit_on_sigterm,
    hold_run_lock,
    kafka_pids,
    log,
    migrate_bench_database,
    postgres_pids,
    redis_pids,
    require_loopback,
    wait_for_quiet_machine,
)

SCRIPT = "benchmarks/rate_limit_accuracy.py"
DEFAULT_DATABASE_URL = "postgres://notif:notif@127.0.0.1:55432/notifications"
PROVIDER = "twilio"
THROUGHPUT_RATE = 100_000.0
THROUGHPUT_BURST = 10_000
TARGET_MAX_WINDOW = 1.01
TARGET_UTILISATION = 0.97
TARGET_SENDS_PER_SECOND = 1000
#: "steady" figures leave out the first seconds after the first request (connections being opened).
STEADY_AFTER = 2.0


def delete_consumer_groups(groups: list[str]) -> None:
    """Best effort; the AdminClient must outlive its futures (they never resolve otherwise)."""
    from confluent_kafka.admin import AdminClient

    from notifications.bus.config import admin_config

    admin = AdminClient(admin_config())
    with contextlib.suppress(Exception):
        for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
            with contextlib.suppress(Exception):
                future.result(timeout=15)


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


# --- helpers ------------------------------------------------------------------------------------
def script_calls(client) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def sms_specs():
    from notifications.bus.topics import registry

    return [spec for spec in registry() if spec.name == "sms" or spec.name.startswith("sms.")]


def wait_for_group(group: str, members: int, procs: list[subprocess.Popen], timeout: float) -> float:
    """Seconds until the workers' consumer group is stable with `members` members that hold every
    partition of `notif.sms`; SystemExit if a worker died or it took longer than `timeout`."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    from notifications.bus.config import admin_config
    from notifications.bus.topics import channel_topic

    admin, topic = AdminClient(admin_config()), channel_topic("sms")
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a worker exited before the group was ready (see its log)")
        description = admin.describe_consumer_groups([group])[group].result(10)
        owned = [
            tp
            for member in description.members
            for tp in (member.assignment.topic_partitions if member.assignment else [])
            if tp.topic == topic
        ]
        if (
            description.state == ConsumerGroupState.STABLE
            and len(description.members) == members
            and len(owned) == len(set((tp.topic, tp.partition) for tp in owned)) > 0
        ):
            partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
            if len(owned) == len(partitions):
                return time.monotonic() - started
        time.sleep(0.25)
    raise SystemExit(f"the consumer group {group} was not ready with {members} members after {timeout:.0f}s")


def produce_backlog(n: int, type_key: str) -> float:
    from confluent_kafka import Producer

    from notifications.bus.config import producer_config
    from notifications.bus.producing import produce_with_retry
    from notifications.bus.topics import channel_topic
    from notifications.dispatch.messages import channel_message

    topic = channel_topic("sms")
    producer = Producer(producer_config())
    errors: list = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    created = datetime.now(UTC).isoformat()
    t0 = time.perf_counter()
    for i in range(n):
        user_id = i + 1
        body = channel_message(
            event_id=str(uuid.uuid4()), user_id=user_id, channel="sms", type=type_key, category="transactional",
            urgency="normal", priority="transactional", created_at=created, locale="en",
            to={"phone": f"+4915{i:09d}"}, content={"body": f"Your order A-{i:07d} has shipped and arrives tomorrow."},
        )  # fmt: skip
        key = body["id"]
        produce_with_retry(
            producer, topic, orjson.dumps(body), str(user_id).encode(), [("idempotency-key", key.encode())], on_delivery
        )
        producer.poll(0)
    remaining = producer.flush(120)
    if remaining or errors:
        raise RuntimeError(f"producing the backlog failed: {len(errors)} errors, {remaining} unacknowledged")
    return time.perf_counter() - t0


def delivery_outcomes(type_key: str) -> dict[str, int]:
    """What the workers recorded: rows per status, and messages that needed more than one attempt."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT status, count(*), count(*) FILTER (WHERE attempts > 1) FROM notifications_deliverylog"
            " WHERE type = %s GROUP BY status",
            [type_key],
        )
        rows = cur.fetchall()
    out = {status: count for status, count, _ in rows}
    out["attempts>1"] = sum(retried for _, _, retried in rows)
    return out


def worker_command(profile_path: Path | None = None) -> list[str]:
    """`manage.py run_worker --channel sms`, or the same command through `python -c` under cProfile."""
    if profile_path is None:
        return [sys.executable, "manage.py", "run_worker", "--channel", "sms"]
    code = (
        "import cProfile, django; django.setup(); from django.core.management import call_command; "
        "profile = cProfile.Profile(); profile.enable(); call_command('run_worker', channel='sms'); "
        f"profile.disable(); profile.dump_stats({str(profile_path)!r})"
    )
    return [sys.executable, "-c", code]


def profile_summary(path: Path) -> str:
    import io
    import pstats

    if not path.exists():
        return "(no profile written)"
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(14)
    stats.sort_stats("cumulative").print_stats(14)
    lines = [line for line in buf.getvalue().splitlines() if line.strip() and not line.startswith("   Ordered by")]
    return "\n".join(
        "  " + line.replace(str(REPO) + "/", "").replace(".venv/lib/python3.11/site-packages/", "")
        for line in lines
        if "function calls" not in line
    )


def percentile_index(n: int, q: float) -> int:
    return min(n - 1, max(0, int(q * (n - 1))))


def analyse(times: list[float], rate: float | None) -> dict:
    """Figures from the accepted requests' arrival times (sandbox monotonic clock)."""
    times = sorted(times)
    n = len(times)
    out: dict = {"accepted_recorded": n}
    if n < 2:
        return out
    span = times[-1] - times[0]
    out["span"] = span
    out["rate"] = (n - 1) / span if span > 0 else float("nan")
    lo, hi = percentile_index(n, 0.05), percentile_index(n, 0.95)
    mid_span = times[hi] - times[lo]
    out["mid_rate"] = (hi - lo) / mid_span if mid_span > 0 else float("nan")
    # Requests in each whole second after the first request (the last, partial second is left out).
    whole = int(span)
    per_second = [0] * max(whole, 1)
    for t in times:
        k = int(t - times[0])
        if k < whole:
            per_second[k] += 1
    from provider_sandbox.recorder import max_in_window

    steady = [t for t in times if t >= times[0] + STEADY_AFTER]
    out["steady_max_1s"] = max_in_window(steady)[0] if span >= STEADY_AFTER + 1 else None
    out["min_second"] = min(per_second) if whole else n
    out["max_second"] = max(per_second) if whole else n
    if rate:
        out["util"] = n / (rate * span) if span > 0 else float("nan")
        out["util_mid"] = (hi - lo) / (rate * mid_span) if mid_span > 0 else float("nan")
    return out


# --- one scenario --------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, run: str, bench_url: str, sandbox, redis_client, tmpdir: Path):
        self.args = args
        self.run = run
        self.bench_url = bench_url
        self.sandbox = sandbox
        self.client = sandbox.client("twilio")
        self.redis = redis_client
        self.tmpdir = tmpdir
        self.index = 0
        self.type_key = f"bench.rl.{run}"
        self.prefixes: list[str] = []
        self.groups: list[str] = []
        self.failed_logs: list[Path] = []

    def worker_env(self, topic_prefix: str, redis_prefix: str, concurrency: int) -> dict[str, str]:
        from django.conf import settings

        from provider_sandbox.platform_env import provider_env

        env = dict(os.environ)
        env.update(provider_env(self.sandbox.urls))
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "config.settings",
                "DATABASE_URL": self.bench_url,
                "KAFKA_BOOTSTRAP_SERVERS": settings.KAFKA_BOOTSTRAP_SERVERS,
                "KAFKA_TOPIC_PREFIX": topic_prefix,
                "KAFKA_DEFAULT_PARTITIONS": str(self.args.partitions),
                "REDIS_URL": settings.REDIS_URL,
                "REDIS_KEY_PREFIX": redis_prefix,
                "METRICS_PORT": "0",
                "WORKER_CONCURRENCY": str(concurrency),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.args.batch_size:
            env["WORKER_BATCH_SIZE"] = str(self.args.batch_size)
        return env

    def scenario(
        self,
        label: str,
        *,
        workers: int,
        messages: int,
        provider_rate: float,
        provider_burst: int,
        sandbox_rate: float | None,
        latency_ms: float,
        concurrency: int,
        max_connections: int | None = None,
        profile: bool = False,
    ) -> dict:
        from django.conf import settings

        from notifications.bus.config import consumer_config
        from notifications.bus.consumers import consumer
        from notifications.bus.kafka_admin import delete_topics_with_prefix, ensure_topics
        from notifications.models import Provider

        self.index += 1
        topic_prefix, redis_prefix = f"benchrl{self.run}{self.index}.", f"benchrl{self.run}{self.index}:"
        self.prefixes.append(topic_prefix)
        settings.KAFKA_TOPIC_PREFIX, settings.REDIS_KEY_PREFIX = topic_prefix, redis_prefix
        self.groups.append(consumer_config(consumer("worker-sms").group)["group.id"])  # run_worker's, under this prefix
        settings.KAFKA_DEFAULT_PARTITIONS = self.args.partitions
        log(
            f"[{label}] prefix {topic_prefix}: {workers} worker(s), provider {provider_rate:g}/s "
            f"burst {provider_burst}, "
            f"sandbox {'unlimited' if sandbox_rate is None else f'{sandbox_rate:g}/s'}, latency {latency_ms:g} ms, "
            f"concurrency {concurrency}" + (f", {max_connections} connections" if max_connections else "")
        )
        ensure_topics(specs=sms_specs())
        if self.args.wait_quiet:
            wait_for_quiet_machine(self.args.wait_quiet)
        Provider.objects.filter(name=PROVIDER).update(rate=provider_rate, burst=provider_burst)
        self.client.reset(config=True)
        self.client.configure(rate=sandbox_rate, latency={"kind": "fixed", "ms": latency_ms} if latency_ms else None)
        baseline = self.client.requests_page(since=10**15, limit=0)["last_seq"]
        type_key = f"{self.type_key}.{self.index}"
        backlog_first = self.args.start == "backlog-first"
        if backlog_first:
            produce_seconds = produce_backlog(messages, type_key)
            log(f"[{label}] backlog of {messages:,} produced in {produce_seconds:.1f}s")

        env = self.worker_env(topic_prefix, redis_prefix, concurrency)
        if max_connections:
            env["TWILIO_MAX_CONNECTIONS"] = str(max_connections)
        profile_path = self.tmpdir / f"{self.index:02d}.prof" if profile else None
        cmd = worker_command(profile_path)
        procs: list[subprocess.Popen] = []
        logs: list[Path] = []
        meter = CpuMeter(
            {
                "workers": lambda: [p.pid for p in procs],
                "sandbox": lambda: [self.sandbox.proc.pid],
                "redis": redis_pids,
                "kafka": kafka_pids,
                "postgres": postgres_pids,
            }
        )
        calls_before = script_calls(self.redis)
        timeout = min(self.args.scenario_timeout, 60 + 3 * messages / min(provider_rate, 1000))
        spawned = time.monotonic()
        meter.start()
        for i in range(workers):
            path = self.tmpdir / f"{self.index:02d}-{label.replace(' ', '_').replace('/', '-')}-w{i}.log"
            logs.append(path)
            with path.open("wb") as out:
                procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
        if not backlog_first:
            # The spike arrives while the workers run (as in production): wait until every worker
            # holds its partitions, then produce; times and CPU count from the backlog on.
            ready_after = wait_for_group(self.groups[-1], workers, procs, timeout=120.0)
            spawned = time.monotonic()
            meter.start()
            produce_seconds = produce_backlog(messages, type_key)
            log(
                f"[{label}] {workers} worker(s) ready after {ready_after:.1f}s; "
                f"backlog of {messages:,} produced in {produce_seconds:.1f}s"
            )
        accepted, distinct, died, done_at = 0, 0, [], None
        try:
            deadline = spawned + timeout
            while time.monotonic() < deadline:
                accepted = self.client.requests_page(since=10**15, limit=0)["last_seq"] - baseline
                died = [p for p in procs if p.poll() is not None]
                if accepted >= messages:  # done when every message got through (duplicates do not count)
                    now_stats = self.client.stats()
                    distinct = now_stats["accepted"] - now_stats["duplicates"]["extra_requests"]
                if distinct >= messages or died:
                    break
                time.sleep(0.25)
            done_at = time.monotonic()
            time.sleep(1.0)  # late duplicates, if any, arrive meanwhile
            meter.stop()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            codes = []
            for p in procs:
                try:
                    codes.append(p.wait(30))
                except subprocess.TimeoutExpired:
                    p.kill()
                    codes.append(p.wait(10))
        calls = script_calls(self.redis) - calls_before
        stats = self.client.stats()
        records = [(r["t_mono"], r["idempotency_key"]) for r in self.client.iter_requests(since=baseline)]
        outcomes = delivery_outcomes(type_key)
        times = [t for t, _ in records]
        distinct = len({k for _, k in records})
        if self.args.dump_dir:
            Path(self.args.dump_dir).mkdir(parents=True, exist_ok=True)
            dump = Path(self.args.dump_dir) / f"{self.index:02d}-{label.replace(' ', '_')}.json"
            dump.write_bytes(
                orjson.dumps({"label": label, "spawned": spawned, "t_mono": times, "keys": [k for _, k in records]})
            )
        result = {
            "label": label,
            "workers": workers,
            "messages": messages,
            "provider_rate": provider_rate,
            "provider_burst": provider_burst,
            "sandbox_rate": sandbox_rate,
            "latency_ms": latency_ms,
            "concurrency": concurrency,
            "max_connections": max_connections,
            "accepted": stats["accepted"],
            "distinct": distinct,
            "complete": distinct >= messages and not died,
            "timed_out": distinct < messages and not died,
            "exit_codes": codes,
            "max_1s": stats["max_1s_window"],
            "rate_limited": stats["rate_limited"],
            "errors": stats.get("errors", {}),
            "duplicates": stats["duplicates"]["extra_requests"],
            "duplicate_keys": stats["duplicates"]["keys"],
            "script_calls": calls,
            "forfeited": forfeited_slots(logs),
            "outcomes": outcomes,
            "first_send_after": (min(times) - spawned) if times else float("nan"),
            "drain_seconds": (max(times) - spawned) if times else float("nan"),
            "wait_seconds": (done_at or time.monotonic()) - spawned,
            "cpu": dict(meter.used),
            "cpu_wall": meter.wall,
            "cpu_summary": meter.summary(),
            "profile": profile_summary(profile_path) if profile_path else "",
            **analyse(times, provider_rate if provider_rate < THROUGHPUT_RATE else None),
        }
        if not result["complete"] or any(codes):
            self.failed_logs += logs
            log(f"[{label}] INCOMPLETE or unclean exit: {distinct}/{messages} delivered, exit codes {codes}")
        elif self.args.keep_logs:
            self.failed_logs += logs
        log(
            f"[{label}] accepted {stats['accepted']:,}, max 1 s {stats['max_1s_window']}, "
            f"429s {stats['rate_limited']}, "
            f"duplicates {result['duplicates']}, span {result.get('span', float('nan')):.1f}s"
        )
        with contextlib.suppress(Exception):
            delete_topics_with_prefix(topic_prefix)
        with contextlib.suppress(Exception):
            delete_redis_prefix(self.redis, f"{redis_prefix}*")
        return result


FORFEIT_LINE = re.compile(rb": (\d+) send slot\(s\) given up for starting too late")


def forfeited_slots(logs: list[Path]) -> int:
    """Booked slots the workers gave up because their process woke too late (each worker logs its
    count when it stops)."""
    total = 0
    for path in logs:
        with contextlib.suppress(OSError):
            total += sum(int(m.group(1)) for m in FORFEIT_LINE.finditer(path.read_bytes()))
    return total


# --- main --------------------------------------------------------------------------------------
def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def throughput_rows(text: str) -> list[tuple[float, int, int | None]]:
    rows = []
    for item in text.split(","):
        if not item.strip():
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise argparse.ArgumentTypeError(
                f"bad throughput row {item!r}: use LATENCY_MS:CONCURRENCY[:MAX_CONNECTIONS]"
            )
        rows.append((float(parts[0]), int(parts[1]), int(parts[2]) if len(parts) == 3 else None))
    return rows


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=20_000, help="backlog per accuracy scenario")
    p.add_argument("--rate", type=float, default=500.0, help="Provider rate R (requests/s)")
    p.add_argument("--burst", type=int, default=5, help="Provider burst B")
    p.add_argument("--workers", type=int_list, default=[1, 4, 16], help="worker process counts, e.g. 1,4,16")
    p.add_argument("--variants", default="open,contract", help="open (sandbox far above R), contract (sandbox = R)")
    p.add_argument("--accuracy-latency-ms", type=float, default=20.0, help="sandbox latency in accuracy scenarios")
    p.add_argument("--accuracy-concurrency", type=int, default=200, help="WORKER_CONCURRENCY in accuracy scenarios")
    p.add_argument("--open-sandbox-rate", type=float, default=100_000.0, help="sandbox rate in the open variant")
    p.add_argument("--throughput-messages", type=int, default=20_000)
    p.add_argument(
        "--throughput-rows",
        type=throughput_rows,
        default=throughput_rows("0:200,0:500,100:200,100:500"),
        help="LATENCY_MS:CONCURRENCY[:MAX_CONNECTIONS],... (one worker, Provider rate 100,000)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="WORKER_BATCH_SIZE (default: the setting, 500)")
    p.add_argument("--partitions", type=int, default=16, help="partitions of the sms topics")
    p.add_argument(
        "--start",
        choices=("workers-first", "backlog-first"),
        default="workers-first",
        help="workers-first: the backlog arrives once every worker holds its partitions (a spike on a running "
        "fleet); backlog-first: the workers start on a backlog (their start-up and group joins in the busy span)",
    )
    p.add_argument("--scenario-timeout", type=float, default=240.0, help="max seconds a scenario may take")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--database", default="bench_notifications", help="dedicated database (created if missing)")
    p.add_argument("--dump-dir", default=None, help="write each scenario's arrival times (JSON) into this directory")
    p.add_argument("--keep-logs", action="store_true", help="keep every worker's log (in a temporary directory)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="wait up to this many seconds for other work on the machine to stop before measuring",
    )
    p.add_argument("--profile-worker", action="store_true", help="run the throughput rows' worker under cProfile")
    p.add_argument(
        "--sandbox-nice",
        type=int,
        default=-10,
        help="scheduling priority of the sandbox (the measuring instrument) relative to the workers; 0 = unchanged",
    )
    args = p.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - {"open", "contract"}
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}")
    return args


def command_line(args: argparse.Namespace) -> str:
    rows = ",".join(f"{lat:g}:{conc}" + (f":{mc}" if mc else "") for lat, conc, mc in args.throughput_rows)
    parts = [".venv/bin/python", SCRIPT, "--messages", str(args.messages), "--rate", f"{args.rate:g}",
             "--burst", str(args.burst), "--workers", ",".join(map(str, args.workers)),
             "--variants", ",".join(args.variants), "--accuracy-latency-ms", f"{args.accuracy_latency_ms:g}",
             "--accuracy-concurrency", str(args.accuracy_concurrency),
             "--throughput-messages", str(args.throughput_messages), "--throughput-rows", rows,
             "--partitions", str(args.partitions)]  # fmt: skip
    if args.batch_size:
        parts += ["--batch-size", str(args.batch_size)]
    if args.open_sandbox_rate != 100_000.0:
        parts += ["--open-sandbox-rate", f"{args.open_sandbox_rate:g}"]
    if args.sandbox_nice != -10:
        parts += ["--sandbox-nice", str(args.sandbox_nice)]
    if args.profile_worker:
        parts.append("--profile-worker")
    if args.wait_quiet:
        parts += ["--wait-quiet", f"{args.wait_quiet:g}"]
    parts += ["--start", args.start]
    if args.skip_accuracy:
        parts.append("--skip-accuracy")
    if args.skip_throughput:
        parts.append("--skip-throughput")
    if args.database != "bench_notifications":
        parts += ["--database", args.database]
    return shlex.join(parts)


def main() -> int:
    args = parse_args()
    exit_on_sigterm()
    run = uuid.uuid4().hex[:8]
    bench_url = use_bench_database(args.database)
    topic_prefix, redis_prefix = f"benchrl{run}0.", f"benchrl{run}0:"
    os.environ.update({"KAFKA_TOPIC_PREFIX": topic_prefix, "REDIS_KEY_PREFIX": redis_prefix})

    import django

    django.setup()
    import logging

    from django.conf import settings

    logging.getLogger("httpx").setLevel(logging.WARNING)  # the control-API polls
    settings.KAFKA_TOPIC_PREFIX, settings.REDIS_KEY_PREFIX = topic_prefix, redis_prefix
    settings.KAFKA_DEFAULT_PARTITIONS = args.partitions
    assert settings.DATABASES["default"]["NAME"] == args.database
    require_loopback()

    from django.db import connection

    from notifications.bus.kafka_admin import delete_topics_with_prefix
    from notifications.models import Provider
    from notifications.redis_client import get_redis
    from provider_sandbox.process import SandboxProcess

    migrate_bench_database()
    run_lock = hold_run_lock(2, "rate_limit_accuracy")  # noqa: F841 - held until the process exits
    redis_client = get_redis()
    tmpdir = Path(tempfile.mkdtemp(prefix=f"benchrl{run}-"))
    previous = Provider.objects.filter(name=PROVIDER).values().first()
    Provider.objects.update_or_create(
        name=PROVIDER,
        defaults={"channel": "sms", "kind": "twilio", "rate": args.rate, "burst": args.burst,
                  "transactional_reserve": 0, "priority": 1, "enabled": True},
    )  # fmt: skip
    sandbox = SandboxProcess(
        ["--only", "twilio", "--twilio-port", "0", "--twilio-rate", f"{args.open_sandbox_rate:g}", "--seed", "1"]
    ).start()
    assert urlsplit(sandbox.url("twilio")).hostname == "127.0.0.1"
    args.sandbox_niced = False
    if args.sandbox_nice:
        try:  # a starved sandbox would stamp queued requests late, in bursts: the instrument must keep up
            os.setpriority(os.PRIO_PROCESS, sandbox.proc.pid, args.sandbox_nice)
            args.sandbox_niced = True
        except OSError as exc:
            log(f"could not renice the sandbox to {args.sandbox_nice}: {exc}")
    bench = Bench(args, run, bench_url, sandbox, redis_client, tmpdir)
    accuracy: list[dict] = []
    throughput: list[dict] = []
    try:
        if not args.skip_accuracy:
            for variant in args.variants:
                for workers in args.workers:
                    accuracy.append(
                        bench.scenario(
                            f"{variant} {workers}w",
                            workers=workers,
                            messages=args.messages,
                            provider_rate=args.rate,
                            provider_burst=args.burst,
                            sandbox_rate=args.open_sandbox_rate if variant == "open" else args.rate,
                            latency_ms=args.accuracy_latency_ms,
                            concurrency=args.accuracy_concurrency,
                        )
                    )
        if not args.skip_throughput:
            for latency, concurrency, max_connections in args.throughput_rows:
                throughput.append(
                    bench.scenario(
                        f"tput {latency:g}ms c{concurrency}" + (f" mc{max_connections}" if max_connections else ""),
                        workers=1,
                        messages=args.throughput_messages,
                        provider_rate=THROUGHPUT_RATE,
                        provider_burst=THROUGHPUT_BURST,
                        sandbox_rate=args.open_sandbox_rate,
                        latency_ms=latency,
                        concurrency=concurrency,
                        max_connections=max_connections,
                        profile=args.profile_worker,
                    )
                )
        print_report(args, accuracy, throughput)
        for path in bench.failed_logs if not args.keep_logs else []:
            print(f"\n--- tail of {path}:", file=sys.stderr)
            with contextlib.suppress(OSError):
                print("\n".join(path.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr)
        ok = all(r["complete"] and not any(r["exit_codes"]) for r in accuracy + throughput)
        return 0 if ok else 1
    finally:
        log("cleaning up ...")
        sandbox.stop()
        for prefix in [*bench.prefixes, topic_prefix]:
            with contextlib.suppress(Exception):
                delete_topics_with_prefix(prefix)
            with contextlib.suppress(Exception):
                delete_redis_prefix(redis_client, f"{prefix[:-1]}:*")
        if bench.groups:
            delete_consumer_groups(bench.groups)
        with contextlib.suppress(Exception), connection.cursor() as cur:
            cur.execute("DELETE FROM notifications_deliverylog WHERE type LIKE %s", [f"{bench.type_key}.%"])
        with contextlib.suppress(Exception):
            if previous is None:
                Provider.objects.filter(name=PROVIDER).delete()
            else:
                Provider.objects.filter(name=PROVIDER).update(
                    **{k: v for k, v in previous.items() if k not in ("id", "updated_at")}
                )
        if not bench.failed_logs:
            shutil.rmtree(tmpdir, ignore_errors=True)
        else:
            log(f"worker logs kept in {tmpdir}")
        log("clean-up done")


# --- report --------------------------------------------------------------------------------------
def fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def cpu_ms_per_send(r: dict) -> float:
    """CPU the worker processes spent per accepted send (with --start backlog-first: start-up included), in ms."""
    return r["cpu"].get("workers", 0.0) * 1000 / max(r["accepted"], 1)


def cpu_share(r: dict, group: str) -> float:
    return r["cpu"].get(group, 0.0) / r["cpu_wall"] * 100 if r["cpu_wall"] else float("nan")


def print_report(args: argparse.Namespace, accuracy: list[dict], throughput: list[dict]) -> None:
    cores = os.cpu_count() or 1
    print()
    if accuracy:
        rate = args.rate
        print(
            f"Rate-limit accuracy: Provider '{PROVIDER}' rate R = {rate:g}/s, burst B = {args.burst}; backlog of "
            f"{args.messages:,} sms per scenario; sandbox latency {args.accuracy_latency_ms:g} ms; WORKER_CONCURRENCY "
            f"{args.accuracy_concurrency}; {args.partitions} partitions; {cores} CPU cores"
        )
        from django.conf import settings

        margin = getattr(settings, "RATE_LIMIT_WINDOW_MARGIN", None)
        print(
            f"  targets: max 1 s window / R <= {TARGET_MAX_WINDOW}, utilisation >= {TARGET_UTILISATION}, "
            f"0 x 429, 0 duplicates; workers book send slots (1 + {margin}) / R apart "
            f"(RATE_LIMIT_WINDOW_MARGIN; utilisation <= {1 / (1 + (margin or 0)):.3f} by construction)"
        )
        head = (
            f"{'scenario':<13} {'sandbox':>8} {'accepted':>8} {'max1s':>6} {'/R':>6} {'steady':>6} {'util':>6} "
            f"{'util90':>6} "
            f"{'min/s':>6} {'max/s':>6} {'429s':>6} {'dups':>5} {'busy s':>7} {'1st s':>6} {'lua/send':>8} "
            f"{'ms/send':>7} {'forfeit':>7} {'workers%':>8} {'sandbox%':>8} {'redis%':>6} {'other%':>6}"
        )
        print(head)
        print("-" * len(head))
        for r in accuracy:
            sandbox = "=R" if r["sandbox_rate"] == r["provider_rate"] else "open"
            print(
                f"{r['label']:<13} {sandbox:>8} {r['accepted']:>8,} {r['max_1s']:>6} {r['max_1s'] / rate:>6.3f} "
                f"{fmt(r['steady_max_1s'] / rate if r.get('steady_max_1s') is not None else None, '>6.3f'):>6} "
                f"{fmt(r.get('util'), '>6.3f'):>6} {fmt(r.get('util_mid'), '>6.3f'):>6} "
                f"{fmt(r.get('min_second'), '>6'):>6} {fmt(r.get('max_second'), '>6'):>6} {r['rate_limited']:>6,} "
                f"{r['duplicates']:>5} {fmt(r.get('span'), '>7.1f'):>7} {fmt(r['first_send_after'], '>6.1f'):>6} "
                f"{r['script_calls'] / max(r['accepted'], 1):>8.1f} {cpu_ms_per_send(r):>7.2f} "
                f"{r['forfeited']:>7,} {cpu_share(r, 'workers'):>7.0f}% "
                f"{cpu_share(r, 'sandbox'):>7.0f}% {cpu_share(r, 'redis'):>5.0f}% "
                f"{r['cpu'].get('other processes', 0.0) / r['cpu_wall'] * 100:>5.0f}%"
            )
        for r in accuracy:
            verdicts = []
            ratio = r["max_1s"] / rate
            verdicts.append(f"max/R {ratio:.3f} {'ok' if ratio <= TARGET_MAX_WINDOW else 'MISSES'}")
            if r.get("util") is not None:
                verdicts.append(f"util {r['util']:.3f} {'ok' if r['util'] >= TARGET_UTILISATION else 'MISSES'}")
            verdicts.append(f"429s {r['rate_limited']} {'ok' if r['rate_limited'] == 0 else 'MISSES'}")
            verdicts.append(f"dups {r['duplicates']} {'ok' if r['duplicates'] == 0 else 'MISSES'}")
            extra = "" if r["complete"] else f" INCOMPLETE ({r['distinct']:,}/{r['messages']:,} delivered)"
            if any(r["exit_codes"]):
                extra += f" worker exit codes {r['exit_codes']}"
            logged = ", ".join(f"{k} {v:,}" for k, v in sorted(r["outcomes"].items()))
            print(f"  {r['label']:<13} " + "; ".join(verdicts) + extra + f" | delivery log: {logged}")
        print(
            "  max1s = most requests the sandbox accepted in any 1 s window (exact, arrival times); steady = max1s / R "
            f"leaving out the first {STEADY_AFTER:g} s after the first request; util = accepted / "
            "(R x busy s), busy s = first to last accepted request; util90 = the same over the middle 90% of the "
            "requests; min/s, max/s = quietest / busiest whole second of the busy span; 1st s = seconds from "
            "the backlog's arrival (--start workers-first; backlog-first: from spawning the workers) to the first "
            "request; lua/send = Redis EVALSHA calls per accepted send, machine-wide "
            "(1 dedup confirm + slot bookings, including refused ones); forfeit = booked slots given up because a "
            "worker woke more than half the margin after them; ms/send = worker CPU per accepted send "
            "(backlog-first: start-up included); CPU in % of one core over the scenario "
            "(other% = processes outside the benchmark)"
        )
    if throughput:
        print()
        print(
            f"Worker throughput, one `run_worker --channel sms` process, Provider rate {THROUGHPUT_RATE:,.0f}/s (no "
            f"limit), {args.throughput_messages:,} messages, sandbox unthrottled; target >= "
            f"{TARGET_SENDS_PER_SECOND:,} sends/s per process at 100 ms"
        )
        head = (
            f"{'latency':>8} {'concurrency':>11} {'sockets':>7} {'accepted':>8} {'seconds':>8} {'sends/s':>8} "
            f"{'mid sends/s':>11} {'dups':>5} {'ms/send':>7} {'worker%':>7} {'sandbox%':>8} {'redis%':>6} "
            f"{'other%':>6}"
        )
        print(head)
        print("-" * len(head))
        for r in throughput:
            print(
                f"{r['latency_ms']:>6g}ms {r['concurrency']:>11} "
                f"{r['max_connections'] or max(200, r['concurrency']):>7} {r['accepted']:>8,} "
                f"{fmt(r.get('span'), '>8.1f'):>8} {fmt(r.get('rate'), '>8,.0f'):>8} "
                f"{fmt(r.get('mid_rate'), '>11,.0f'):>11} {r['duplicates']:>5} {cpu_ms_per_send(r):>7.2f} "
                f"{cpu_share(r, 'workers'):>6.0f}% "
                f"{cpu_share(r, 'sandbox'):>7.0f}% {cpu_share(r, 'redis'):>5.0f}% "
                f"{r['cpu'].get('other processes', 0.0) / r['cpu_wall'] * 100:>5.0f}%"
                + ("" if r["complete"] else f"  INCOMPLETE ({r['distinct']:,}/{r['messages']:,} delivered)")
            )
        print(
            "  sends/s = accepted / (last - first arrival at the sandbox); mid = over the middle 90%; sockets = "
            "TWILIO_MAX_CONNECTIONS (max(200, concurrency) unless the row sets it); ms/send = worker CPU per "
            "accepted send; CPU in % of one core over the whole scenario (incl. worker start-up)"
        )
        for r in throughput:
            if r["profile"]:
                print()
                print(f"cProfile of the worker, {r['label']} (main thread: consumer loop + asyncio sends):")
                print(r["profile"])
    print()
    print(f"command: {command_line(args)}")
    print(f"code: {code_version()}")
    print(f"measured {datetime.now(UTC):%Y-%m-%d %H:%M UTC} on 127.0.0.1 (sandbox, Redis, Kafka, PostgreSQL local)")


if __name__ == "__main__":
    sys.exit(main())
