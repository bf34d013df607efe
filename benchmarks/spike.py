"""The spike: a steady transactional stream while a digest to every user goes through the real pipeline.

    .venv/bin/python benchmarks/spike.py [--users 100000] [--contract-rate 200] [--otp-rate 20]
                                         [--rest-seconds 20] [--after-seconds 20] [--workers 2]
                                         [--variants lanes,naive] [--out-dir DIR]
    make spike SPIKE_ARGS="--users 3000 --contract-rate 200 --rest-seconds 10 --after-seconds 5"

Per variant (`lanes`: PRIORITY_LANES=1, `naive`: one FIFO lane per channel) it runs the whole pipeline
for e-mail against a SendGrid sandbox enforcing exactly --contract-rate, while an open-loop stream
POSTs urgent one-time codes through the phases `rest`, `api-digest`, `campaign` and `after`; it prints
OTP latency, provider rate, 429s, bulk utilisation, lost and duplicated pairs and where the backlog
sat, and writes a PNG and `report.md` into --out-dir. Exit status 1 when a variant did not complete
or `lanes` misses a target. Set-up, phases, targets and the why: benchmarks/README.md, "spike.py"."""

import argparse
import asyncio
import contextlib
import math
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import orjson  # noqa: E402
from _common import (  # noqa: E402
    BENCH_LOCK_CLASS,
    CpuMeter,
    children_of,
    code_version,
    delete_redis_prefix,
    exit_on_sigterm,
    kafka_pids,
    log,
    migrate_bench_database,
    postgres_pids,
    redis_pids,
    require_loopback,
)
from campaign_fanout import create_database, drop_database, load_users  # noqa: E402

from tests.role_processes import RoleProcesses  # noqa: E402

SCRIPT = "benchmarks/spike.py"
SERVICE = "bench-spike"
OTP_TYPE = "bench.spike.otp"
DIGEST_TYPE = "bench.spike.digest"
PATH = "/api/v1/events"
PHASES = ("rest", "api-digest", "campaign", "after")
BULK_OF_PHASE = {"api-digest": "digest", "campaign": "campaign"}
VARIANTS = {"lanes": "1", "naive": "0"}
TARGET_P99_RATIO = 1.5
TARGET_UTILISATION = 0.95
RUN_LOCK = (BENCH_LOCK_CLASS, 6)  # advisory lock on the main database: one spike run at a time (it drops bench_spike)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=100_000, help="users, each gets one digest per bulk phase")
    p.add_argument("--contract-rate", type=float, default=200.0, help="SendGrid contract (sandbox and Provider row)")
    p.add_argument("--burst", type=int, default=10, help="the Provider row's burst")
    p.add_argument("--reserve", type=int, default=0, help="the Provider row's transactional reserve")
    p.add_argument("--otp-rate", type=float, default=20.0, help="OTP requests per second (open loop)")
    p.add_argument("--warmup-seconds", type=float, default=3.0, help="OTPs before `rest` (not in the figures)")
    p.add_argument("--rest-seconds", type=float, default=20.0)
    p.add_argument("--after-seconds", type=float, default=20.0)
    p.add_argument("--phase-timeout", type=float, default=None, help="default: 60 + 3 x users / contract")
    p.add_argument("--post-concurrency", type=int, default=4, help="clients POSTing the digest batches")
    p.add_argument("--post-batch", type=int, default=500, help="digest events per request (INGEST_MAX_BATCH)")
    p.add_argument("--workers", type=int, default=2, help="run_worker --channel email processes")
    p.add_argument("--web-workers", type=int, default=2, help="uvicorn workers (as the Procfile)")
    p.add_argument("--latency", default="normal:20:5", help="sandbox latency spec (MS, uniform:A:B, normal:M:SD)")
    p.add_argument("--variants", default="lanes,naive", help="comma-separated: lanes (PRIORITY_LANES=1), naive (=0)")
    p.add_argument("--database", default="bench_spike")
    p.add_argument("--keep-database", action="store_true", help="do not drop the database at the end")
    p.add_argument("--out-dir", default=None, help="where the PNG and report.md go (default: a new temp dir)")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (kept anyway on failure)")
    p.add_argument("--bulk-nice", type=int, default=10, help="CPU priority of the bulk lane's dispatcher (lanes)")
    p.add_argument("--sandbox-nice", type=int, default=-10, help="priority of the sandbox (the instrument); 0 = as is")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants or set(args.variants) - set(VARIANTS):
        p.error(f"--variants takes {', '.join(VARIANTS)}")
    if not 1 <= args.post_batch <= 500:
        p.error("--post-batch must be between 1 and 500 (INGEST_MAX_BATCH)")
    if args.otp_rate >= args.contract_rate:
        p.error("--otp-rate must stay below --contract-rate")
    if args.phase_timeout is None:
        args.phase_timeout = 60 + 3 * args.users / args.contract_rate
    return args


def command_line(args: argparse.Namespace) -> str:
    parts = [".venv/bin/python", SCRIPT]
    for name, value in vars(args).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts += [flag] if value else []
        elif isinstance(value, list):
            parts += [flag, ",".join(value)]
        elif value is not None:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(parts)


def hold_run_lock():
    """Session advisory lock on the main database, so a second run waits instead of dropping our database."""
    import psycopg

    conn = psycopg.connect(os.environ.get("DATABASE_URL") or "postgres://notif:notif@127.0.0.1:55432/notifications")
    conn.autocommit = True
    deadline = time.monotonic() + 600
    while not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", RUN_LOCK).fetchone()[0]:
        if time.monotonic() > deadline:
            raise SystemExit("another spike run holds the lock after 600 s")
        time.sleep(2.0)
    return conn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1)]


# --- the data both variants share ---------------------------------------------------------------------
@dataclass
class Catalog:
    users: list[int]
    raw_key: str
    launcher: object
    digest_type: object


def create_catalog(args, run: str) -> Catalog:
    """Users (COPY), the two types with their e-mail templates, the API key, the SendGrid row, a launcher."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from notifications.models import ApiKey, Category, NotificationTemplate, NotificationType, Provider, Urgency

    log(f"COPYing {args.users:,} users ...")
    load_users(args.users, 0.0, run)  # every user has a profile and an e-mail address; none opted out
    with connection.cursor() as cur:
        cur.execute("SELECT user_id FROM preferences_recipientprofile ORDER BY user_id")
        users = [row[0] for row in cur.fetchall()]
    otp = NotificationType.objects.create(
        key=OTP_TYPE, name="One-time code", category=Category.SECURITY, urgency=Urgency.URGENT,
        default_channels=["email"],
    )  # fmt: skip
    NotificationTemplate.objects.create(
        notification_type=otp, channel="email", subject="Your code: {{ code }}",
        body="Your one-time code is {{ code }}. It expires in 10 minutes.",
    )  # fmt: skip
    digest = NotificationType.objects.create(
        key=DIGEST_TYPE, name="Weekly digest", category=Category.MARKETING, urgency=Urgency.BULK,
        default_channels=["email"],
    )  # fmt: skip
    NotificationTemplate.objects.create(
        notification_type=digest, channel="email", subject="Your week: {{ headline }}",
        body="This week: {{ headline }}. Unsubscribe: {{ unsubscribe_url }}", html="<p>This week: {{ headline }}</p>",
    )  # fmt: skip
    _, raw_key = ApiKey.generate(service=SERVICE)
    Provider.objects.create(
        name="sendgrid", channel="email", kind="sendgrid", rate=args.contract_rate, burst=args.burst,
        transactional_reserve=args.reserve,
    )  # fmt: skip
    launcher = get_user_model().objects.create_superuser("spike-launcher", "launcher@example.com", "x" * 20)
    return Catalog(users=users, raw_key=raw_key, launcher=launcher, digest_type=digest)


def create_campaign(catalog: Catalog, variant: str):
    """A draft campaign of the digest type to every loaded user (the launcher has no profile: not matched)."""
    from campaigns.models import Campaign, CampaignCopy

    campaign = Campaign.objects.create(
        name=f"spike digest ({variant})",
        notification_type=catalog.digest_type,
        channels=["email"],
        audience={"all": [{"field": "attributes.plan", "op": "in", "value": ["free", "pro"]}]},
    )
    CampaignCopy.objects.create(
        campaign=campaign, channel="email", locale="", subject="Your week, {{ user.first_name }}",
        body="The digest of your week. {{ unsubscribe_url }}", html="<p>The digest of your week.</p>",
    )  # fmt: skip
    return campaign


# --- the expected (event, recipient, channel) pairs --------------------------------------------------------
class Expected:
    """Every idempotency key the run should see exactly once at the sandbox, by kind.

    Keys are the worker's message ids, which the SendGrid adapter sends as `custom_args.notification_id`
    and the sandbox records as the request's first idempotency key: `<platform event id>:<user>:email`
    for events, `<launch id>:<user>:email` for the campaign."""

    def __init__(self, users: list[int], tag: str) -> None:
        from notifications.outbox.envelope import platform_event_id

        self.tag = tag
        self.otp: dict[str, int] = {}  # key -> OTP index (filled by the OTP stream before it POSTs)
        self.digest = {
            f"{platform_event_id(service=SERVICE, producer_event_id=self.digest_event_id(uid))}:{uid}:email"
            for uid in users
        }
        self.campaign: set[str] = set()
        self.campaign_prefix: str | None = None

    def digest_event_id(self, uid: int) -> str:
        return f"{self.tag}-digest-{uid}"

    def launched(self, launch_id, users: list[int]) -> None:
        self.campaign_prefix = f"{launch_id}:"  # first: the collector classifies arrivals by it
        self.campaign = {f"{launch_id}:{uid}:email" for uid in users}

    def kind(self, key: str) -> str:
        if key in self.otp:
            return "otp"
        if key in self.digest:
            return "digest"
        if self.campaign_prefix and key.startswith(self.campaign_prefix):
            return "campaign"
        return "other"


# --- load generators ---------------------------------------------------------------------------------------
@dataclass
class Otp:
    index: int
    key: str
    t_send: float  # wall clock just before the request was written
    status: str = ""
    t_answer: float = 0.0  # wall clock when the API's answer was read


class OtpStream(threading.Thread):
    """Open loop: request i is sent at start + i / rate whatever the earlier answers, from one asyncio loop."""

    def __init__(self, base_url: str, raw_key: str, rate: float, users: list[int], expected: Expected, seed: int):
        super().__init__(name="otp-stream", daemon=True)
        self.url, self.rate, self.users, self.expected = base_url + PATH, rate, users, expected
        self.headers = {"Authorization": f"Api-Key {raw_key}", "Content-Type": "application/json"}
        self.rng = random.Random(seed)
        self.sent: list[Otp] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
            tasks: set[asyncio.Task] = set()
            start, i = time.monotonic(), 0
            while not self.stop_event.is_set():
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(self._send(client, i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.wait(tasks, timeout=35)

    async def _send(self, client, i: int) -> None:
        from notifications.outbox.envelope import platform_event_id

        uid = self.rng.choice(self.users)
        event_id = f"{self.expected.tag}-otp-{i}"
        key = f"{platform_event_id(service=SERVICE, producer_event_id=event_id)}:{uid}:email"
        body = orjson.dumps({"event_id": event_id, "type": OTP_TYPE, "recipients": [str(uid)],
                             "data": {"code": f"{(i * 7919) % 1_000_000:06d}"}})  # fmt: skip
        otp = Otp(i, key, time.time())
        self.expected.otp[key] = i
        self.sent.append(otp)
        try:
            response = await client.post(self.url, content=body, headers=self.headers)
            otp.t_answer = time.time()
            otp.status = str(response.status_code)
        except Exception as exc:  # a failed request is a data point
            otp.status = type(exc).__name__


class DigestPoster(threading.Thread):
    """The digest's producer: `_digest_client.py` in a process of its own (another service than the OTP
    stream's), POSTing one digest event per user, --post-batch events per request, from --post-concurrency
    clients; a failed request is retried with the same event ids (the API deduplicates them)."""

    def __init__(self, base_url: str, raw_key: str, users: list[int], expected: Expected, batch: int, clients: int):
        super().__init__(name="digest-poster", daemon=True)
        self.job = {
            "url": base_url + PATH,
            "headers": {"Authorization": f"Api-Key {raw_key}", "Content-Type": "application/json"},
            "users": users,
            "event_id_prefix": expected.digest_event_id(""),
            "type": DIGEST_TYPE,
            "data": {"headline": "three new posts, one reply"},
            "batch": batch,
            "clients": clients,
        }
        self.statuses: Counter[str] = Counter()
        self.failed_events = 0
        self.started = self.finished = 0.0
        self.stop_event = threading.Event()

    def run(self) -> None:
        self.started = time.time()
        client = REPO / "benchmarks" / "_digest_client.py"
        proc = subprocess.Popen([sys.executable, str(client)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        watcher = threading.Thread(target=lambda: self.stop_event.wait() and proc.poll() is None and proc.terminate(),
                                   daemon=True)  # fmt: skip
        watcher.start()
        out, _ = proc.communicate(orjson.dumps(self.job))
        self.stop_event.set()
        if proc.returncode == 0 and out:
            result = orjson.loads(out)
            self.started, self.finished = result["started"], result["finished"]
            self.statuses.update(result["statuses"])
            self.failed_events = result["failed_events"]
        else:
            self.finished = time.time()
            self.statuses[f"client exit {proc.returncode}"] += 1
            self.failed_events = len(self.job["users"])


# --- observers ------------------------------------------------------------------------------------------------
class Collector(threading.Thread):
    """Reads the sandbox's accepted requests as they come (its control API, `seq` paging), keeping only
    (t_wall, t_mono, first idempotency key) each; counts distinct keys per kind as they arrive."""

    def __init__(self, client, expected: Expected, interval: float = 0.5) -> None:
        super().__init__(name="collector", daemon=True)
        self.client, self.expected, self.interval = client, expected, interval
        self.records: list[tuple[float, float, str]] = []
        self.seen: Counter[str] = Counter()
        self.distinct: Counter[str] = Counter()
        self.since = 0
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # the sandbox died: the main loop sees it through `error`
                self.error = exc
                return

    def poll(self) -> None:
        with self.lock:
            while True:
                page = self.client.requests_page(since=self.since, limit=20_000)
                for r in page["requests"]:
                    key = r["idempotency_key"] or f"no-key:{r['seq']}"
                    self.records.append((r["t_wall"], r["t_mono"], key))
                    self.seen[key] += 1
                    if self.seen[key] == 1:
                        self.distinct[self.expected.kind(key)] += 1
                self.since = page["next_since"]
                if page["count"] < 20_000:
                    return


def consumer_lag(admin, prefix: str) -> dict[str, int]:
    """Messages waiting for the consumer groups of this run: the dispatcher's (notif.events*) and the
    workers' (notif.email, its bulk lane and retry tiers), as campaigns.expansion.pacing.ChannelBacklog counts."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    lag = {"events": 0, "email": 0}
    groups = [g.group_id for g in admin.list_consumer_groups(request_timeout=5).result(5).valid]
    groups = [g for g in groups if prefix in g]
    if not groups:
        return lag
    for group, future in admin.describe_consumer_groups(groups, request_timeout=5).items():
        assigned = {
            (tp.topic, tp.partition): area_of_topic(tp.topic, prefix)
            for member in future.result(5).members
            for tp in (member.assignment.topic_partitions if member.assignment else [])
        }
        tps = [TopicPartition(t, p) for (t, p), area in assigned.items() if area]
        if not tps:
            continue
        committed_future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group]
        committed = {(tp.topic, tp.partition): tp.offset for tp in committed_future.result(5).topic_partitions}
        ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=5)
        starts = admin.list_offsets({tp: OffsetSpec.earliest() for tp in tps}, request_timeout=5)
        for tp in tps:
            low, high = starts[tp].result(5).offset, ends[tp].result(5).offset
            done = committed.get((tp.topic, tp.partition), -1)
            lag[assigned[(tp.topic, tp.partition)]] += max(0, high - max(done if done >= 0 else low, low))
    return lag


def area_of_topic(topic: str, prefix: str) -> str | None:
    logical = topic[len(prefix) :] if topic.startswith(prefix) else ""
    if logical.startswith("notif.events") and not logical.endswith(".dlq"):
        return "events"
    if logical.startswith("notif.email") and not logical.endswith((".dlq", ".batch", ".delayed")):
        return "email"
    return None


class BacklogSampler(threading.Thread):
    """Every `interval` s: outbox rows of this run (by topic prefix) and the consumer lag of its groups."""

    def __init__(self, prefix: str, interval: float = 2.0) -> None:
        super().__init__(name="backlog-sampler", daemon=True)
        self.prefix, self.interval = prefix, interval
        self.samples: list[tuple[float, int, int, int]] = []  # wall, outbox rows, events lag, email lag
        self.stop_event = threading.Event()

    def run(self) -> None:
        import psycopg
        from confluent_kafka.admin import AdminClient

        from notifications.bus.config import admin_config
        from notifications.outbox.relay import conninfo_from_django

        admin = AdminClient(admin_config())
        with psycopg.connect(conninfo_from_django(), autocommit=True, application_name="bench_spike_sampler") as conn:
            while not self.stop_event.wait(self.interval):
                with contextlib.suppress(Exception):  # a missed sample is only a gap in the plot
                    rows = conn.execute(
                        "SELECT count(*) FROM notifications_outboxevent WHERE topic LIKE %s", (self.prefix + "%",)
                    ).fetchone()[0]
                    lag = consumer_lag(admin, self.prefix)
                    self.samples.append((time.time(), rows, lag["events"], lag["email"]))


# --- the platform's processes ----------------------------------------------------------------------------------
class Platform(RoleProcesses):
    """One variant's processes, each logging to its own file; stopped with SIGTERM."""

    CONSUMERS = ("dispatcher", "dispatcher-bulk", "orchestrator", "expander")

    def start(self, name: str, *cmd: str, nice: int = 0) -> None:
        self.spawn(name, cmd, nice=nice)

    def start_all(self, args, port: int, *, lanes: bool) -> None:
        web = ["config.asgi:application", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        self.start("web", "-m", "uvicorn", *web, "--workers", str(args.web_workers), "--no-access-log")
        if lanes:  # as the Procfile: a relay and a dispatcher per events lane, the bulk ones at a lower CPU priority
            self.start("relay", "manage.py", "relay_outbox", "--lane", "priority")
            self.start("relay-bulk", "manage.py", "relay_outbox", "--lane", "bulk", nice=args.bulk_nice)
            self.start("dispatcher", "manage.py", "run_consumer", "dispatcher", "--lane", "priority")
            bulk = ("manage.py", "run_consumer", "dispatcher", "--lane", "bulk")
            self.start("dispatcher-bulk", *bulk, nice=args.bulk_nice)
        else:
            self.start("relay", "manage.py", "relay_outbox")
            self.start("dispatcher", "manage.py", "run_dispatcher")
        self.start("orchestrator", "manage.py", "run_campaign_orchestrator")
        self.start("expander", "manage.py", "run_batch_expander", "--channel", "email")
        for i in range(args.workers):
            self.start(f"worker{i}", "manage.py", "run_worker", "--channel", "email")

    def check(self) -> None:
        if dead := self.dead():
            raise VariantFailed(f"process(es) exited early: {dead}")

    def wait_ready(self, base_url: str, prefix: str, timeout: float = 120.0) -> float:
        """/readyz answers 200, every consumer logged "partitions assigned", and every consumer group of the
        run is stable (no rebalance left to pause a consumer once the load starts)."""
        import httpx
        from confluent_kafka import ConsumerGroupState
        from confluent_kafka.admin import AdminClient

        from notifications.bus.config import admin_config

        admin, started = AdminClient(admin_config()), time.monotonic()
        consumers = [n for n in self.procs if n in self.CONSUMERS or n.startswith("worker")]
        while time.monotonic() - started < timeout:
            self.check()
            with contextlib.suppress(httpx.HTTPError):
                web = httpx.get(base_url + "/readyz", timeout=5).status_code == 200
                logged = all(b'"partitions assigned"' in (self.logdir / f"{n}.log").read_bytes() for n in consumers)
                if web and logged:
                    ids = [g.group_id for g in admin.list_consumer_groups().result(5).valid if prefix in g.group_id]
                    states = [f.result(5).state for f in admin.describe_consumer_groups(ids).values()] if ids else []
                    groups = sum(n in self.procs for n in self.CONSUMERS) + 1
                    if len(states) >= groups and all(s == ConsumerGroupState.STABLE for s in states):
                        return time.monotonic() - started
            time.sleep(0.5)
        raise VariantFailed(f"the platform was not ready after {timeout:.0f} s (logs in {self.logdir})")


class VariantFailed(Exception):
    pass


def start_sandbox(args):
    from provider_sandbox.process import SandboxProcess

    max_records = 2 * args.users + int(args.otp_rate * 3600) + 100_000  # the collector reads them as they come
    sandbox = SandboxProcess(
        ["--only", "sendgrid", "--sendgrid-port", "0", "--sendgrid-rate", f"{args.contract_rate:g}",
         "--sendgrid-latency", args.latency, "--seed", str(args.seed), "--max-records", str(max_records)]
    ).start()  # fmt: skip
    if args.sandbox_nice:
        try:  # a starved sandbox stamps queued requests late and in bunches: the instrument must keep up
            os.setpriority(os.PRIO_PROCESS, sandbox.proc.pid, args.sandbox_nice)
        except OSError as exc:
            log(f"could not renice the sandbox to {args.sandbox_nice}: {exc}")
    return sandbox


def platform_env(variant: str, prefix: str, redis_prefix: str, sandbox) -> dict[str, str]:
    from provider_sandbox.platform_env import provider_env

    return {
        **os.environ,
        **provider_env(sandbox.urls),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "0",
        "KAFKA_TOPIC_PREFIX": prefix,
        "REDIS_KEY_PREFIX": redis_prefix,
        "PRIORITY_LANES": VARIANTS[variant],
        "METRICS_PORT": "0",
        "LOG_LEVEL": "INFO",  # "partitions assigned" is how readiness is seen
        "PYTHONUNBUFFERED": "1",
    }


# --- one variant -------------------------------------------------------------------------------------------------
@dataclass
class VariantRun:
    name: str
    prefix: str  # its KAFKA_TOPIC_PREFIX
    phases: list[tuple[str, float, float]] = field(default_factory=list)  # (name, start, end) wall clock
    otps: list[Otp] = field(default_factory=list)
    records: list[tuple[float, float, str]] = field(default_factory=list)
    seen: Counter = field(default_factory=Counter)
    expected: Expected | None = None
    rate_limited: dict[str, int] = field(default_factory=dict)  # 429s per phase
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    exit_codes: dict[str, int | str] = field(default_factory=dict)
    post: dict = field(default_factory=dict)
    error: str = ""
    ready_after: float = 0.0
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> group -> % of one core
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)  # OTP event id -> Kafka times (c)


class PhaseClock:
    """Marks phase boundaries; reads the sandbox's 429 counter and each party's CPU time at each."""

    def __init__(self, run: VariantRun, sandbox, platform: Platform) -> None:
        self.run, self.client = run, sandbox.client("sendgrid")
        self.cpu_groups = cpu_groups(platform, sandbox)
        self.current: tuple[str, float, int, CpuMeter] | None = None

    def mark(self, name: str | None) -> None:
        now, limited = time.time(), self.client.stats()["rate_limited"]
        if self.current is not None:
            prev, started, limited_before, meter = self.current
            meter.stop()
            self.run.phases.append((prev, started, now))
            self.run.rate_limited[prev] = limited - limited_before
            self.run.cpu[prev] = {group: sec / meter.wall * 100 for group, sec in meter.used.items()}
        meter = CpuMeter(self.cpu_groups)
        meter.start()
        self.current = (name, now, limited, meter) if name else None
        if name:
            log(f"[{self.run.name}] phase {name}")


def cpu_groups(platform: Platform, sandbox) -> dict[str, Callable[[], list[int]]]:
    def procs(*names: str) -> Callable[[], list[int]]:
        return lambda: [p.pid for n, p in platform.procs.items() if n.rstrip("0123456789") in names]

    web = platform.procs["web"].pid
    return {
        "web": lambda: [web, *children_of(web)],
        "relay+dispatcher": procs("relay", "relay-bulk", "dispatcher", "dispatcher-bulk"),
        "orchestrator+expander": procs("orchestrator", "expander"),
        "workers": procs("worker"),
        "sandbox": lambda: [sandbox.proc.pid],
        "pg+kafka+redis": lambda: postgres_pids() + kafka_pids() + redis_pids(),
        "this script": lambda: [os.getpid()],
    }


def hold(seconds: float, platform: Platform) -> None:
    """Sleep while watching that every process stays up."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        platform.check()
        time.sleep(min(0.25, left))


def wait_until(what: str, done: Callable[[], bool], timeout: float, platform: Platform, collector: Collector,
               progress: Callable[[], str]) -> bool:  # fmt: skip
    started, logged = time.monotonic(), time.monotonic()
    while not done():
        platform.check()
        if collector.error is not None:
            raise VariantFailed(f"reading the sandbox failed: {collector.error}")
        if time.monotonic() - started > timeout:
            log(f"{what}: timed out after {timeout:.0f} s ({progress()})")
            return False
        if time.monotonic() - logged >= 5:
            logged = time.monotonic()
            log(f"{what}: {progress()}")
        time.sleep(0.25)
    return True


def run_variant(args, variant: str, run: str, catalog: Catalog, logdir: Path) -> VariantRun:
    """One variant end to end: its topics, sandbox and processes, the phases, then its clean-up."""
    from django.conf import settings

    from notifications.bus.kafka_admin import ensure_topics

    prefix, redis_prefix = f"benchsp{run}{variant[0]}.", f"benchsp{run}{variant[0]}:"
    settings.KAFKA_TOPIC_PREFIX, settings.REDIS_KEY_PREFIX = prefix, redis_prefix  # the launch event's topic
    result = VariantRun(variant, prefix)
    log(f"[{variant}] PRIORITY_LANES={VARIANTS[variant]}, topic prefix {prefix}")
    sandbox = platform = None
    try:
        ensure_topics()
        campaign = create_campaign(catalog, variant)
        result.expected = Expected(catalog.users, f"{run}{variant[0]}")
        sandbox = start_sandbox(args)
        port = free_port()
        platform = Platform(platform_env(variant, prefix, redis_prefix, sandbox), logdir)
        platform.start_all(args, port, lanes=VARIANTS[variant] == "1")
        result.ready_after = platform.wait_ready(f"http://127.0.0.1:{port}", prefix)
        log(f"[{variant}] {len(platform.procs)} processes ready after {result.ready_after:.1f} s")
        drive_phases(args, result, catalog, campaign, sandbox, platform, f"http://127.0.0.1:{port}")
        result.stages = otp_stage_times(prefix, {o.key.split(":", 1)[0] for o in result.otps})
    except VariantFailed as exc:
        result.error = str(exc)
        log(f"[{variant}] FAILED: {exc}")
    finally:
        if platform is not None:
            result.exit_codes = platform.stop()
        if sandbox is not None:
            sandbox.stop()
        clean_up_variant(prefix, redis_prefix)
    if unclean := {k: v for k, v in result.exit_codes.items() if v != 0}:
        log(f"[{variant}] processes did not exit cleanly: {unclean}; logs in {logdir}")
    return result


def drive_phases(args, result: VariantRun, catalog: Catalog, campaign, sandbox, platform: Platform, base_url: str):
    """The OTP stream through warm-up, rest, api-digest, campaign and after; the observers' data into `result`."""
    from campaigns import services

    expected, n = result.expected, len(catalog.users)
    collector = Collector(sandbox.client("sendgrid"), expected)
    sampler = BacklogSampler(result.prefix)
    otp = OtpStream(base_url, catalog.raw_key, args.otp_rate, catalog.users, expected, args.seed)
    poster = DigestPoster(base_url, catalog.raw_key, catalog.users, expected, args.post_batch, args.post_concurrency)
    clock = PhaseClock(result, sandbox, platform)

    def progress() -> str:
        d = collector.distinct
        return f"otp {d['otp']:,}/{len(otp.sent):,}, digest {d['digest']:,}/{n:,}, campaign {d['campaign']:,}/{n:,}"

    def wait(what: str, done: Callable[[], bool], timeout: float) -> None:
        if not wait_until(f"[{result.name}] {what}", done, timeout, platform, collector, progress):
            result.timed_out.append(what)

    threads = [collector, sampler, otp]
    try:
        for t in threads:
            t.start()
        clock.mark("warm-up")
        hold(args.warmup_seconds, platform)
        clock.mark("rest")
        hold(args.rest_seconds, platform)
        clock.mark("api-digest")
        threads.append(poster)
        poster.start()
        wait("api-digest", lambda: collector.distinct["digest"] >= n, args.phase_timeout)
        poster.stop_event.set()
        poster.join(60)
        clock.mark("campaign")
        launched = services.campaign_launch(campaign_id=campaign.pk, user=catalog.launcher)
        expected.launched(launched.launch_id, catalog.users)
        wait("campaign", lambda: collector.distinct["campaign"] >= n, args.phase_timeout)
        clock.mark("after")
        hold(args.after_seconds, platform)
        clock.mark(None)
        otp.stop_event.set()
        otp.join(40)
        accepted = [o.key for o in otp.sent if o.status == "202"]
        wait("OTP drain", lambda: all(k in collector.seen for k in accepted), 30.0)
        time.sleep(2.0)  # a late duplicate would arrive now
        collector.stop_event.set()
        collector.join(30)
        collector.poll()
    finally:
        if clock.current is not None:  # failed mid-phase: its figures so far still count
            with contextlib.suppress(Exception):
                clock.mark(None)
        for t in threads:
            t.stop_event.set()
        for t in threads:
            t.join(40)
        result.otps, result.records, result.seen = otp.sent, collector.records, collector.seen
        result.samples = sampler.samples
        if poster.started:
            result.post = {"seconds": poster.finished - poster.started, "statuses": dict(poster.statuses),
                           "failed_events": poster.failed_events}  # fmt: skip


def otp_stage_times(prefix: str, event_ids: set[str]) -> dict[str, tuple[float, float]]:
    """Per OTP event id: when the relay wrote it to `notif.events` and the dispatcher its e-mail to
    `notif.email` (the messages' CreateTime, wall clock), read back from both topics."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from notifications.bus.config import consumer_config
    from notifications.bus.topics import topic_name

    found: dict[str, dict[str, float]] = {"events": {}, "email": {}}
    for stage in found:
        consumer = Consumer(consumer_config(f"{prefix}stage-times", **{"enable.auto.commit": False}))
        try:
            topic = topic_name(stage)
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p, end in ends.items() if end > 0])
            left = {p for p, end in ends.items() if end > 0}
            deadline = time.monotonic() + 60
            while left and time.monotonic() < deadline:
                for m in consumer.consume(1000, 1.0):
                    if m.error():
                        continue
                    key = dict(m.headers() or []).get("idempotency-key", b"").decode().split(":", 1)[0]
                    if key in event_ids:
                        found[stage].setdefault(key, m.timestamp()[1] / 1000)
                    if m.offset() + 1 >= ends[m.partition()]:
                        left.discard(m.partition())
        finally:
            consumer.close()
    return {k: (t, found["email"][k]) for k, t in found["events"].items() if k in found["email"]}


def clean_up_variant(prefix: str, redis_prefix: str) -> None:
    """The run's topics, consumer groups, Redis keys and any outbox rows still addressed to its topics."""
    from confluent_kafka.admin import AdminClient
    from django.db import connection

    from notifications.bus.config import admin_config
    from notifications.bus.kafka_admin import delete_topics_with_prefix
    from notifications.redis_client import get_redis

    with contextlib.suppress(Exception):
        delete_topics_with_prefix(prefix)
    with contextlib.suppress(Exception):
        delete_consumer_groups(AdminClient(admin_config()), prefix)
    with contextlib.suppress(Exception):
        delete_redis_prefix(get_redis(), f"{redis_prefix}*")
    with contextlib.suppress(Exception), connection.cursor() as cur:
        cur.execute("DELETE FROM notifications_outboxevent WHERE topic LIKE %s", [prefix + "%"])


def delete_consumer_groups(admin, prefix: str, patience: float = 45.0) -> None:
    """Delete the run's consumer groups; a member that died without leaving keeps its group non-empty until
    its session times out (session.timeout.ms, 30 s), so retry until then."""
    deadline = time.monotonic() + patience
    while groups := [g.group_id for g in admin.list_consumer_groups().result(10).valid if prefix in g.group_id]:
        for future in admin.delete_consumer_groups(groups, request_timeout=10).values():
            with contextlib.suppress(Exception):  # non-empty yet: retried below
                future.result(15)
        if time.monotonic() > deadline:
            log(f"consumer groups left behind: {groups}")
            return
        time.sleep(2.0)


# --- analysis ------------------------------------------------------------------------------------------------------
def per_second(run: VariantRun, t0: float, kinds: Callable[[str], str]) -> dict[str, Counter]:
    series: dict[str, Counter] = {"total": Counter(), "otp": Counter(), "bulk": Counter()}
    for t_wall, _, key in run.records:
        s = int(t_wall - t0)
        series["total"][s] += 1
        series["otp" if kinds(key) == "otp" else "bulk"][s] += 1
    return series


def analyse(args, run: VariantRun) -> dict:
    """Figures per phase and per second, from the sandbox's records, the OTP stream and the samples."""
    first = {}  # key -> wall time of its first arrival at the sandbox
    for t_wall, _, key in run.records:
        first.setdefault(key, t_wall)
    t0 = run.phases[0][1] if run.phases else time.time()
    series = per_second(run, t0, run.expected.kind)
    phases = {
        name: phase_figures(args, run, (start, end), t0, series, first, BULK_OF_PHASE.get(name))
        for name, start, end in run.phases
        if name in PHASES
    }
    for name, figures in phases.items():
        figures["rate_limited"] = run.rate_limited.get(name, 0)
        figures.update({f"cpu {group}": share for group, share in run.cpu.get(name, {}).items()})
    rest_p99 = phases.get("rest", {}).get("p99", float("nan"))
    for figures in phases.values():
        figures["p99_ratio"] = figures["p99"] / rest_p99 if rest_p99 and not math.isnan(rest_p99) else float("nan")
    latency: dict[int, list[float]] = {}  # send second -> latencies (ms) of the OTPs sent in it
    for o in run.otps:
        if o.key in first:
            latency.setdefault(int(o.t_send - t0), []).append((first[o.key] - o.t_send) * 1000)
    return {"phases": phases, "totals": run_totals(run), "series": series, "t0": t0, "latency": latency}


def phase_figures(args, run: VariantRun, span, t0: float, series, first: dict, bulk_kind: str | None) -> dict:
    from provider_sandbox.recorder import max_in_window

    start, end = span
    otps = [o for o in run.otps if start <= o.t_send < end and o.status == "202"]
    latencies = sorted((first[o.key] - o.t_send) * 1000 for o in otps if o.key in first)
    answers = sorted((o.t_answer - o.t_send) * 1000 for o in otps)
    staged = [(o, run.stages[o.key.split(":", 1)[0]]) for o in otps if o.key in first]
    staged = [(o, t_events, t_email) for o, (t_events, t_email) in staged if o.key.split(":", 1)[0] in run.stages]
    bulk_keys = getattr(run.expected, bulk_kind) if bulk_kind else set()
    mine = [o.key for o in otps] + list(bulk_keys)  # the pairs this phase answers for
    busy = backlogged_seconds(run, t0, span, bulk_kind)
    seconds = busy or list(range(int(start - t0) + 1, int(end - t0)))  # else the phase's whole seconds
    total = sum(series["total"][s] for s in seconds)
    budget = sum(max(0.0, args.contract_rate - series["otp"][s]) for s in busy)
    samples = [s for s in run.samples if start <= s[0] < end]
    return {
        "seconds": end - start,
        "otps": len(otps),
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "max": latencies[-1] if latencies else float("nan"),
        "api_p99": percentile(answers, 0.99),
        "relay_p99": percentile(sorted((t_events - o.t_answer) * 1000 for o, t_events, _ in staged), 0.99),
        "dispatch_p99": percentile(sorted((t_email - t_events) * 1000 for o, t_events, t_email in staged), 0.99),
        "send_p99": percentile(sorted((first[o.key] - t_email) * 1000 for o, _, t_email in staged), 0.99),
        "rate": total / len(seconds) if seconds else float("nan"),
        "rate_share": total / len(seconds) / args.contract_rate if seconds else float("nan"),
        "otp_rate": sum(series["otp"][s] for s in seconds) / len(seconds) if seconds else float("nan"),
        "max_1s": max_in_window([t_mono for t_wall, t_mono, _ in run.records if start <= t_wall < end])[0],
        "bulk": sum(1 for k in bulk_keys if k in run.seen),
        "utilisation": sum(series["bulk"][s] for s in busy) / budget if budget else float("nan"),
        "lost": sum(1 for k in mine if k not in run.seen),
        "duplicated": sum(run.seen[k] - 1 for k in mine if run.seen[k] > 1),
        "outbox": max((s[1] for s in samples), default=0),
        "events_lag": max((s[2] for s in samples), default=0),
        "email_lag": max((s[3] for s in samples), default=0),
    }


def run_totals(run: VariantRun) -> dict:
    from provider_sandbox.recorder import max_in_window

    exp = run.expected
    accepted = [o.key for o in run.otps if o.status == "202"]
    expected = [*accepted, *exp.digest, *exp.campaign]
    return {
        "otps": len(accepted),
        "otp_errors": len(run.otps) - len(accepted),
        "expected": len(expected),
        "lost": sum(1 for k in expected if k not in run.seen),
        "duplicated": sum(c - 1 for c in run.seen.values() if c > 1),
        "unexpected": sum(1 for k in run.seen if exp.kind(k) == "other"),
        "rate_limited": sum(run.rate_limited.values()),
        "max_1s": max_in_window([t_mono for _, t_mono, _ in run.records])[0],
    }


def backlogged_seconds(run: VariantRun, t0: float, span, kind: str | None) -> list[int]:
    """Whole seconds of the phase strictly between the first and the last arrival of its bulk at the sandbox:
    the bulk had messages queued then (the partial first and last seconds are left out)."""
    if kind is None:
        return []
    start, end = span
    bulk = [int(t - t0) for t, _, key in run.records if start <= t < end and run.expected.kind(key) == kind]
    return list(range(min(bulk) + 1, max(bulk))) if len(bulk) >= 2 else []


def verdicts(figures: dict) -> dict[str, bool]:
    phases, totals = figures["phases"], figures["totals"]
    spikes = [phases[p] for p in BULK_OF_PHASE if p in phases]
    return {
        "p99": bool(spikes) and all(f["p99_ratio"] <= TARGET_P99_RATIO for f in spikes),
        "utilisation": bool(spikes) and all(f["utilisation"] >= TARGET_UTILISATION for f in spikes),
        "lost": totals["lost"] == 0,
        "duplicated": totals["duplicated"] == 0,
        "429": totals["rate_limited"] == 0,
    }


# --- output -------------------------------------------------------------------------------------------------------
def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


CPU_GROUPS = ("workers", "web", "relay+dispatcher", "orchestrator+expander", "sandbox", "pg+kafka+redis",
              "this script", "other processes")  # fmt: skip
ROWS = [  # (label, key, format)
    ("phase seconds", "seconds", ".0f"),
    ("OTPs accepted (202)", "otps", ","),
    ("OTP latency p50 ms", "p50", ".0f"),
    ("OTP latency p99 ms", "p99", ".0f"),
    ("OTP latency max ms", "max", ".0f"),
    ("  of which API (202) p99 ms", "api_p99", ".0f"),
    ("  202 -> notif.events p99 ms (c)", "relay_p99", ".0f"),
    ("  notif.events -> notif.email p99 ms (c)", "dispatch_p99", ".0f"),
    ("  notif.email -> provider p99 ms (c)", "send_p99", ".0f"),
    ("p99 / rest p99", "p99_ratio", ".2f"),
    ("provider sends/s (a)", "rate", ".0f"),
    ("  / contract", "rate_share", ".3f"),
    ("  of which OTP/s", "otp_rate", ".1f"),
    ("largest 1 s window", "max_1s", ","),
    ("429s", "rate_limited", ","),
    ("bulk delivered", "bulk", ","),
    ("bulk utilisation (b)", "utilisation", ".3f"),
    ("lost pairs", "lost", ","),
    ("duplicated pairs", "duplicated", ","),
    ("max outbox rows", "outbox", ","),
    ("max notif.events lag", "events_lag", ","),
    ("max notif.email lag", "email_lag", ","),
    *((f"CPU % {group}", f"cpu {group}", ".0f") for group in CPU_GROUPS),
]


def table_rows(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    header = ["", *[f"{v} {p}" for v in results for p in PHASES]]
    rows = []
    for label, key, spec in ROWS:
        row = [label]
        for figures in results.values():
            row += [fmt(figures["phases"].get(p, {}).get(key), spec) for p in PHASES]
        rows.append(row)
    return header, rows


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def summary_lines(args, results: dict[str, dict], runs: dict[str, VariantRun]) -> list[str]:
    lines = []
    for name, figures in results.items():
        t, run, ok = figures["totals"], runs[name], verdicts(figures)
        p = figures["phases"]
        ratios = ", ".join(f"{ph} {fmt(p.get(ph, {}).get('p99_ratio'), '.2f')}" for ph in BULK_OF_PHASE)
        utils = ", ".join(f"{ph} {fmt(p.get(ph, {}).get('utilisation'), '.3f')}" for ph in BULK_OF_PHASE)
        lines.append(
            f"{name}: spike p99 / rest p99 = {ratios} (target <= {TARGET_P99_RATIO}: {verdict(ok['p99'])}); "
            f"bulk utilisation {utils} (>= {TARGET_UTILISATION}: {verdict(ok['utilisation'])}); "
            f"lost {t['lost']:,}/{t['expected']:,} ({verdict(ok['lost'])}); "
            f"duplicated {t['duplicated']:,} ({verdict(ok['duplicated'])}); "
            f"429s {t['rate_limited']:,} ({verdict(ok['429'])}); largest 1 s window {t['max_1s']:,} "
            f"vs contract {args.contract_rate:g}; unexpected keys {t['unexpected']:,}; "
            f"OTP API errors {t['otp_errors']:,}"
        )
        post = run.post
        if post:
            events = args.users - post["failed_events"]
            lines.append(
                f"  {name}: digest POSTed in {post['seconds']:.1f} s ({events / max(post['seconds'], 1e-9):,.0f} "
                f"events/s; responses {post['statuses']}); platform ready after {run.ready_after:.1f} s"
            )
        busy = {ph: cpu["other processes"] for ph, cpu in run.cpu.items() if cpu.get("other processes", 0) > 15}
        if busy:
            shares = ", ".join(f"{ph} {share:.0f}%" for ph, share in busy.items())
            lines.append(
                f"  {name}: WARNING: other processes used a share of a core meanwhile ({shares}): figures depressed"
            )
        problems = [f"timed out: {', '.join(run.timed_out)}"] if run.timed_out else []
        problems += [f"error: {run.error}"] if run.error else []
        unclean = {k: v for k, v in run.exit_codes.items() if v != 0}
        problems += [f"exit codes {unclean}"] if unclean else []
        if problems:
            lines.append(f"  {name}: INCOMPLETE - " + "; ".join(problems))
    return lines


NOTES = (
    "(a) mean accepted requests/s over the seconds the phase's bulk was backlogged (between its first and last "
    "arrival at the sandbox), else over the whole phase. (b) bulk sends / (contract - OTP sends) over those seconds. "
    "Latency = the sandbox's arrival time of the OTP's e-mail - the client's wall time just before its POST. "
    "Lost/duplicated: the phase's OTPs by send time, plus every recipient of the phase's bulk; keys = worker "
    "message ids as the sandbox recorded them. Lags: largest sample (every 2 s) of messages past the "
    "dispatcher's / the workers' committed offsets. CPU: % of one core over the phase (from /proc; 'other "
    "processes' = everything outside this run, e.g. someone else's tests: figures depressed when it is high). "
    "(c) where an OTP's time goes, each stage's own p99 (they do not add up to the total's): the API's answer "
    "-> the relay writing the event to notif.events -> the dispatcher writing its e-mail to notif.email (Kafka "
    "CreateTime, the producers' wall clocks) -> the sandbox's arrival time."
)


def print_report(args, results: dict[str, dict], runs: dict[str, VariantRun], png: Path | None, report: Path):
    header, rows = table_rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(
        f"\nSpike: {args.users:,} users, OTP stream {args.otp_rate:g}/s, SendGrid sandbox enforcing "
        f"{args.contract_rate:g}/s (rolling 1 s window, latency {args.latency} ms), {args.workers} e-mail worker(s), "
        f"{os.cpu_count()} CPU cores"
    )
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    for line in summary_lines(args, results, runs):
        print(line)
    print(NOTES)
    print(f"plot: {png or '(not written)'}\nreport: {report}")
    print(f"command: {command_line(args)}")
    print(f"code: {code_version()}")


def write_markdown(args, results, runs, png: Path | None, path: Path) -> None:
    header, rows = table_rows(results)
    lines = [
        f"# Spike benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M UTC}",
        "",
        f"{args.users:,} users; OTP stream {args.otp_rate:g}/s; SendGrid sandbox enforcing {args.contract_rate:g}/s "
        f"(rolling 1 s window, latency `{args.latency}` ms); {args.workers} e-mail worker(s); {os.cpu_count()} cores. "
        "Variants: `lanes` = PRIORITY_LANES=1, `naive` = PRIORITY_LANES=0 (one FIFO lane per channel).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        *(f"- {line.strip()}" for line in summary_lines(args, results, runs)),
        "",
        NOTES,
        "",
        f"![provider rate, OTP latency and backlog over time]({png.name})" if png else "(no plot)",
        "",
        f"Command: `{command_line(args)}`",
        "",
        f"Code: {code_version()}",
        "",
    ]
    path.write_text("\n".join(lines))


def write_png(args, results: dict[str, dict], runs: dict[str, VariantRun], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -e '.[dev]'): no plot")
        return None
    fig, axes = plt.subplots(3, len(results), figsize=(7.5 * len(results), 10), sharex="col", squeeze=False)
    for col, (name, figures) in enumerate(results.items()):
        rate_ax, lat_ax, backlog_ax = axes[:, col]
        series, t0 = figures["series"], figures["t0"]
        end = max((int(e - t0) for _, _, e in runs[name].phases), default=1)
        xs = list(range(end + 1))
        rate_ax.plot(xs, [series["total"][s] for s in xs], label="provider requests/s (all)", lw=1.2)
        rate_ax.plot(xs, [series["otp"][s] for s in xs], label="of which OTP", lw=1.0)
        rate_ax.axhline(args.contract_rate, color="red", ls="--", lw=1, label=f"contract {args.contract_rate:g}/s")
        rate_ax.set_title(f"{name} (PRIORITY_LANES={VARIANTS[name]})")
        rate_ax.set_ylabel("requests / s at the sandbox")
        rate_ax.set_ylim(0, args.contract_rate * 1.45)  # room above the contract for the labels and legend
        lat = figures["latency"]
        lx = sorted(lat)
        lat_ax.plot(lx, [percentile(sorted(lat[s]), 0.5) for s in lx], label="OTP latency p50", lw=1.0)
        lat_ax.plot(lx, [max(lat[s]) for s in lx], label="OTP latency max", lw=1.0)
        lat_ax.set_yscale("log")
        lat_ax.set_ylabel("ms (by send second)")
        samples = runs[name].samples
        sx = [s[0] - t0 for s in samples]
        for idx, label in ((1, "outbox rows"), (2, "notif.events lag"), (3, "notif.email lag")):
            backlog_ax.plot(sx, [s[idx] for s in samples], label=label, lw=1.0)
        backlog_ax.set_ylabel("messages waiting")
        backlog_ax.set_xlabel("seconds since the OTP stream started")
        for ax in (rate_ax, lat_ax, backlog_ax):
            for i, (phase, start, _) in enumerate(runs[name].phases):
                ax.axvline(start - t0, color="grey", ls=":", lw=0.8)
                if ax is rate_ax:  # staggered: the warm-up is short
                    y = 0.98 - 0.06 * (i % 3)
                    ax.text(start - t0, y, f" {phase}", transform=ax.get_xaxis_transform(), fontsize=8, va="top")
            if ax is rate_ax:
                ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, 0.86), ncol=3)
            else:
                ax.legend(fontsize=7, loc="best")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- main ------------------------------------------------------------------------------------------------------------
def main() -> int:
    args = parse_args()
    exit_on_sigterm()
    run = uuid.uuid4().hex[:6]
    lock = hold_run_lock()  # noqa: F841 - held until the process exits
    create_database(args.database)
    os.environ.setdefault("LOG_LEVEL", "WARNING")

    import django

    django.setup()
    import logging

    from django.conf import settings
    from django.db import connection

    logging.getLogger("httpx").setLevel(logging.WARNING)
    assert settings.DATABASES["default"]["NAME"] == args.database
    require_loopback()
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix=f"spike-{run}-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix=f"spike-{run}-logs-"))
    runs: dict[str, VariantRun] = {}
    try:
        log(f"migrating {args.database} ...")
        migrate_bench_database()
        catalog = create_catalog(args, run)
        connection.close()
        for variant in args.variants:
            (logs / variant).mkdir()
            runs[variant] = run_variant(args, variant, run, catalog, logs / variant)
        results = {name: analyse(args, r) for name, r in runs.items() if r.phases}
        png = write_png(args, results, runs, out_dir / "spike.png") if results else None
        write_markdown(args, results, runs, png, out_dir / "report.md")
        print_report(args, results, runs, png, out_dir / "report.md")
        complete = all(not r.error and not r.timed_out and all(c == 0 for c in r.exit_codes.values())
                       for r in runs.values())  # fmt: skip
        lanes_ok = "lanes" not in results or all(verdicts(results["lanes"]).values())
        return 0 if complete and lanes_ok and len(results) == len(args.variants) else 1
    finally:
        log("cleaning up ...")
        failed = any(r.error or r.timed_out or any(c != 0 for c in r.exit_codes.values()) for r in runs.values())
        if failed or args.keep_logs:
            log(f"process logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
        connection.close()
        if not args.keep_database:
            drop_database(args.database)
        log(f"out dir: {out_dir}")


if __name__ == "__main__":
    sys.exit(main())
