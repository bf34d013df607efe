"""Campaign fan-out: emitting every batch of a 1,000,000-user campaign, and the end-to-end send rate.

    .venv/bin/python benchmarks/campaign_fanout.py [--users 1000000] [--opted-out 0.2] [--batch-size 50000]
                                                   [--contract-rate 500] [--workers 2] [--send-seconds 30]

Issue targets (issue 5):

* emitting every batch of the campaign takes <= 10 s on this machine (keyset pages with the
  predicate, preferences and contact points in ONE SQL query each, one Kafka message per page and
  channel, a checkpoint per page);
* Kafka batch messages per channel = eligible users / batch size (rounded up);
* end to end (batch expander -> channel workers -> provider sandbox enforcing the contract rate),
  the send rate while backlogged is >= 97% of the contract.

What it does, step by step: benchmarks/README.md, "campaign_fanout.py".
"""

import argparse
import contextlib
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from _common import CpuMeter, delete_redis_prefix, kafka_pids, log, postgres_pids, redis_pids, wait_for_quiet_machine  # noqa: E402

SCRIPT = "benchmarks/campaign_fanout.py"
DEFAULT_DATABASE_URL = "postgres://notif:notif@127.0.0.1:55432/notifications"
TYPE_KEY = "bench.campaign_promo"
CHANNELS = ("email", "sms")
EMIT_TARGET_SECONDS = 10.0
RATE_TARGET = 0.97


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--opted-out", type=float, default=0.2, help="share of users opted out of marketing")
    p.add_argument("--batch-size", type=int, default=50_000)
    p.add_argument("--contract-rate", type=float, default=500.0, help="the sandbox's contract (sends/s)")
    p.add_argument("--burst", type=int, default=5, help="the Provider row's bucket burst")
    p.add_argument("--workers", type=int, default=2, help="run_worker --channel sms processes")
    p.add_argument("--warmup", type=float, default=8.0, help="seconds before the send-rate window opens")
    p.add_argument("--send-seconds", type=float, default=30.0, help="length of the send-rate window")
    p.add_argument("--skip-send", action="store_true", help="only measure the emission")
    p.add_argument("--skip-baseline", action="store_true", help="skip the workers-only comparison run")
    p.add_argument("--profile-expander", metavar="PATH", help="run the expander under cProfile, stats to PATH")
    p.add_argument(
        "--max-backlog", type=int, default=None, help="run_batch_expander --max-backlog (default: automatic)"
    )
    p.add_argument("--database", default="bench_campaigns")
    p.add_argument("--keep-database", action="store_true", help="do not drop the database at the end")
    p.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the first page query")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="wait up to this many seconds for other processes to leave the machine mostly idle before each phase",
    )
    args = p.parse_args()
    if not 1 <= args.batch_size <= 50_000:
        p.error("--batch-size must be between 1 and 50000")
    return args


# -- the dedicated database (before Django is set up) ---------------------------------------------
def pg_env(parts) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PGHOST": parts.hostname or "127.0.0.1",
            "PGPORT": str(parts.port or 5432),
            "PGUSER": parts.username or "notif",
            "PGPASSWORD": parts.password or "",
        }
    )
    return env


def create_database(name: str) -> str:
    """createdb `name` as notif (dropping a leftover of a failed run first); point DATABASE_URL at it."""
    base = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    parts = urlsplit(base)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to run against a non-loopback database host: {parts.hostname}")
    env = pg_env(parts)
    subprocess.run(["dropdb", "--if-exists", "--force", name], env=env, check=True)
    subprocess.run(["createdb", "--owner", parts.username or "notif", name], env=env, check=True)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    os.environ["DATABASE_URL"] = url
    return url


def drop_database(name: str, attempts: int = 10) -> None:
    """dropdb, retried: right after the 1M-row COPY an autovacuum worker (a superuser's process, which
    notif may not terminate) often still holds the database, and `--force` then fails."""
    parts = urlsplit(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    for attempt in range(attempts):
        done = subprocess.run(
            ["dropdb", "--if-exists", "--force", name], env=pg_env(parts), capture_output=True, text=True
        )
        if done.returncode == 0:
            return
        if attempt < attempts - 1:
            time.sleep(2)
    log(f"could not drop database {name}: {done.stderr.strip()}")


# -- loading -----------------------------------------------------------------------------------------
def load_users(n: int, opted_out: float, run: str) -> dict[str, float]:
    """COPY n users, their profiles and the opted-out users' preference documents (text COPY in chunks)."""
    import psycopg

    from notifications.outbox.relay import conninfo_from_django

    now = datetime.now(UTC).isoformat()
    timings = {}
    every = round(1 / opted_out) if opted_out > 0 else 0
    document = '{"categories": {"marketing": {"email": false, "sms": false}}}'
    with psycopg.connect(conninfo_from_django(), application_name="bench_campaign_copy") as conn:
        cur = conn.cursor()
        started = time.perf_counter()
        first = cur.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM auth_user").fetchone()[0]
        ids = range(first, first + n)
        cur.execute("SELECT setval(pg_get_serial_sequence('auth_user', 'id'), %s)", (first + n,))

        def copy(sql: str, line) -> None:
            with cur.copy(sql) as out:
                chunk = []
                for i, uid in enumerate(ids):
                    row = line(i, uid)
                    if row:
                        chunk.append(row)
                    if len(chunk) >= 50_000:
                        out.write("".join(chunk))
                        chunk = []
                if chunk:
                    out.write("".join(chunk))

        copy(
            "COPY auth_user (id, password, is_superuser, username, first_name, last_name, email, is_staff,"
            " is_active, date_joined) FROM STDIN",
            lambda i, uid: f"{uid}\t!\tf\tbc{run}-{i}\tUser{i}\t\tu{i}.{run}@example.com\tf\tt\t{now}\n",
        )
        copy(
            "COPY preferences_recipientprofile (user_id, phone, locale, timezone, attributes, webhook_url,"
            " email_invalid_address, email_invalid_reason, phone_invalid_reason, webhook_invalid_reason,"
            " created_at, updated_at) FROM STDIN",
            lambda i, uid: (
                f"{uid}\t+49151{i:08d}\t{'de' if i % 3 == 0 else 'en'}\tUTC\t"
                f'{{"plan": "{"pro" if i % 10 == 0 else "free"}"}}\t\t\t\t\t\t{now}\t{now}\n'
            ),
        )
        if every:
            copy(
                "COPY preferences_preferencedocument (user_id, document, version, updated_at) FROM STDIN",
                lambda i, uid: f"{uid}\t{document}\t1\t{now}\n" if i % every == 0 else None,
            )
        conn.commit()
        timings["copy"] = time.perf_counter() - started
        conn.autocommit = True
        started = time.perf_counter()
        for table in ("auth_user", "preferences_recipientprofile", "preferences_preferencedocument"):
            conn.execute(f"ANALYZE {table}")
        timings["analyze"] = time.perf_counter() - started
    return timings


def topic_counts(topics: list[str]) -> dict[str, int]:
    from confluent_kafka import Consumer, TopicPartition
    from django.conf import settings

    consumer = Consumer({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "group.id": "bench-counter"})
    try:
        meta = consumer.list_topics(timeout=10).topics
        out = {}
        for topic in topics:
            total = 0
            for p in meta[topic].partitions:
                low, high = _watermarks(consumer, TopicPartition(topic, p))
                total += high - low
            out[topic] = total
        return out
    finally:
        consumer.close()


def _watermarks(consumer, tp, attempts: int = 20) -> tuple[int, int]:
    """A partition's watermarks; right after the topics were created its leader may still be elected
    (NOT_LEADER_FOR_PARTITION, LEADER_NOT_AVAILABLE): asked again for a few seconds."""
    from confluent_kafka import KafkaError, KafkaException

    retriable = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    for _ in range(attempts - 1):
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException as exc:
            if exc.args[0].code() not in retriable:
                raise
        time.sleep(0.25)
    return consumer.get_watermark_offsets(tp, timeout=10)


# -- the phases ----------------------------------------------------------------------------------------
def setup_campaign(args):
    from django.contrib.auth import get_user_model

    from campaigns.models import Campaign, CampaignCopy
    from notifications.models import Category, NotificationType, Urgency

    ntype = NotificationType.objects.create(
        key=TYPE_KEY,
        name="Bench promotion",
        category=Category.MARKETING,
        urgency=Urgency.BULK,
        default_channels=list(CHANNELS),
    )
    campaign = Campaign.objects.create(
        name="bench fan-out",
        notification_type=ntype,
        channels=list(CHANNELS),
        audience={"all": [{"field": "attributes.plan", "op": "in", "value": ["free", "pro"]}]},
    )
    CampaignCopy.objects.create(
        campaign=campaign, channel="email", subject="Sale, {{ user.first_name }}", body="20% off. {{ unsubscribe_url }}"
    )
    CampaignCopy.objects.create(campaign=campaign, channel="sms", body="Sale: 20% off, {{ user.first_name }}")
    launcher = get_user_model().objects.create_superuser("bench-launcher", "bench@example.com", "x" * 20)
    return campaign, launcher


def emit(args, campaign, launcher) -> dict:
    from confluent_kafka import Producer

    from campaigns import services
    from campaigns.models import CampaignLaunch
    from campaigns.orchestrator import CampaignOrchestrator
    from notifications.bus.config import producer_config
    from notifications.bus.topics import channel_topic
    from notifications.redis_client import get_redis

    services.campaign_launch(campaign_id=campaign.pk, user=launcher)
    campaign.refresh_from_db()
    orchestrator = CampaignOrchestrator(
        producer=Producer(producer_config(**{"message.max.bytes": 2_000_000})),
        redis_client=get_redis(),
        batch_size=args.batch_size,
    )
    orchestrator.record_launches(
        [CampaignLaunch(launch_id=campaign.launch_id, campaign_id=campaign.pk, scheduled_for=campaign.launched_at)]
    )
    if args.explain:
        explain_first_page(campaign, args.batch_size, CHANNELS)
    elapsed, page_times, meter = page_until_emitted(orchestrator)
    campaign.refresh_from_db()
    launch = CampaignLaunch.objects.get(launch_id=campaign.launch_id)
    counts = topic_counts([channel_topic(c, "batch") for c in CHANNELS])
    return {
        "seconds": elapsed,
        "pages": launch.next_batch,
        "page_times": page_times,
        "start_step": page_times[0] if page_times else 0.0,
        "batch_messages": {c: counts[channel_topic(c, "batch")] for c in CHANNELS},
        "eligible": {c: launch.emitted_per_channel.get(c, 0) for c in CHANNELS},
        "audience": campaign.audience_size,
        "suppressed": campaign.suppressed_preferences,
        "cpu": meter.summary(),
    }


def page_until_emitted(orchestrator) -> tuple[float, list[float], CpuMeter]:
    """Step ONE orchestrator (in this process) until every batch of the due launches is emitted:
    (seconds from the first page to the last checkpoint, each step's seconds, the CPU meter)."""
    meter = CpuMeter({"bench (orchestrator)": lambda: [os.getpid()], "postgres": postgres_pids, "kafka": kafka_pids})
    page_times: list[float] = []
    meter.start()
    started = time.perf_counter()
    while True:
        t = time.perf_counter()
        if not orchestrator.step():
            break
        page_times.append(time.perf_counter() - t)
        if time.perf_counter() - started > 600:
            raise SystemExit("emission did not finish within 600 s")
    elapsed = time.perf_counter() - started
    meter.stop()
    return elapsed, page_times, meter


def explain_first_page(campaign, batch_size: int, channels) -> None:
    from django.db import connection

    from campaigns.selectors import _flag, audience_queryset, eligibility_q

    qs = audience_queryset(campaign, after_id=0)
    qs = qs.annotate(**{f"eligible_{c}": _flag(eligibility_q(campaign, c, joined=True)) for c in channels})
    qs = qs.order_by("pk")
    sql, params = qs.values_list("pk", *[f"eligible_{c}" for c in channels])[:batch_size].query.sql_with_params()
    with connection.cursor() as cur:
        cur.execute("SET jit = off")  # as the orchestrator does for its page queries
        cur.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        plan = "\n".join(r[0] for r in cur.fetchall())
        cur.execute("RESET jit")
    print("\nEXPLAIN ANALYZE of the first page:\n" + plan, file=sys.stderr)


def send_rate(args, campaign, env: dict[str, str], sandbox, tmp: Path, *, expander: bool = True) -> dict:
    """Run the workers (and the expander) and measure the sandbox's accepted rate over the window."""
    from campaigns.expansion.pacing import ChannelBacklog
    from campaigns.models import Campaign

    client = sandbox.client("twilio")
    client.reset()
    procs: list[tuple[str, subprocess.Popen]] = []
    logs = []

    def start(name: str, *cmd: str) -> None:
        out = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(out)
        profile = (
            ["-m", "cProfile", "-o", args.profile_expander] if name == "expander" and args.profile_expander else []
        )
        procs.append(
            (
                name,
                subprocess.Popen(
                    [sys.executable, *profile, "manage.py", *cmd],
                    cwd=REPO,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                ),
            )
        )

    meter = CpuMeter(
        {
            "expander": lambda: [p.pid for n, p in procs if n == "expander"],
            "workers": lambda: [p.pid for n, p in procs if n.startswith("worker")],
            "sandbox": lambda: [sandbox.proc.pid],
            "postgres": postgres_pids,
            "kafka": kafka_pids,
            "redis": redis_pids,
            "bench": lambda: [os.getpid()],
        }
    )
    codes = {}
    try:
        if expander:
            backlog_args = ["--max-backlog", str(args.max_backlog)] if args.max_backlog else []
            start("expander", "run_batch_expander", "--channel", "sms", *backlog_args)
        for i in range(args.workers):
            start(f"worker{i}", "run_worker", "--channel", "sms")
        deadline = time.monotonic() + 60
        while client.stats()["accepted"] == 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing was sent within 60 s; see the logs in {tmp}")
            time.sleep(0.2)
        log(f"first send; warming up for {args.warmup:.0f}s")
        time.sleep(args.warmup)
        before = client.stats()
        meter.start()
        t0 = time.monotonic()
        time.sleep(args.send_seconds)
        after = client.stats()
        window = time.monotonic() - t0
        meter.stop()
        waiting = ChannelBacklog().waiting("sms")  # messages queued for the workers when the window closed
        if campaign is not None:
            Campaign.objects.filter(pk=campaign.pk).update(state="cancelled")  # stop the expander releasing more
        sent = after["accepted"] - before["accepted"]
        rate = sent / window
        result = {
            "sent": sent,
            "window": window,
            "rate": rate,
            "share": rate / args.contract_rate,
            "max_1s": after.get("max_1s_window"),
            "rate_limited": after.get("rate_limited", 0) - before.get("rate_limited", 0),
            "duplicates": after["duplicates"]["keys"],
            "total_accepted": after["accepted"],
            "waiting_at_end": waiting,
            "cpu": meter.summary(),
        }
    finally:
        for _name, proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs:
            try:
                codes[name] = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = "killed"
        for out in logs:
            out.close()
        bad = {n: c for n, c in codes.items() if c != 0}
        if bad:
            log(f"processes did not exit cleanly: {bad}; logs kept in {tmp}")
    result["unclean"] = bad
    return result


def start_sms_sandbox(args):
    """A Twilio sandbox enforcing --contract-rate, the `twilio` Provider row at the same rate, and the
    environment of the platform processes pointed at them: (sandbox, env)."""
    from notifications.models import Provider
    from provider_sandbox.platform_env import provider_env
    from provider_sandbox.process import SandboxProcess

    sandbox = SandboxProcess(
        ["--only", "twilio", "--twilio-port", "0", "--twilio-rate", f"{args.contract_rate:g}", "--seed", "1"]
    ).start()
    Provider.objects.create(
        name="twilio", channel="sms", kind="twilio", rate=args.contract_rate, burst=args.burst, transactional_reserve=0
    )
    env = {**os.environ, **provider_env(sandbox.urls), "DATABASE_URL": os.environ["DATABASE_URL"], "METRICS_PORT": "0"}
    return sandbox, env


def worker_baseline(args, env: dict[str, str], sandbox, tmp: Path, run: str) -> dict:
    """The same workers against the same sandbox with a backlog produced up front (no campaign, no
    expander): what the workers themselves achieve here, to compare the end-to-end figure with."""
    import orjson
    from confluent_kafka import Producer
    from django.conf import settings

    from notifications.bus.config import producer_config
    from notifications.bus.kafka_admin import delete_topics_with_prefix, ensure_topics
    from notifications.bus.producing import produce_with_retry
    from notifications.bus.topics import channel_topic
    from notifications.dispatch.messages import channel_message

    prefix, previous = f"benchcf{run}b.", settings.KAFKA_TOPIC_PREFIX
    settings.KAFKA_TOPIC_PREFIX = prefix
    try:
        ensure_topics()
        producer = Producer(producer_config())
        count = int(args.contract_rate * (args.warmup + args.send_seconds + 15))
        launch = str(uuid.uuid4())
        for i in range(count):
            message = channel_message(
                event_id=launch, user_id=i, channel="sms", type=TYPE_KEY, category="marketing", urgency="bulk",
                priority="bulk", created_at=datetime.now(UTC).isoformat(), locale="en",
                to={"phone": f"+49152{i:08d}"}, content={"body": "Sale: 20% off"},
            )  # fmt: skip
            produce_with_retry(producer, channel_topic("sms"), orjson.dumps(message), str(i).encode(), None)
        assert producer.flush(60) == 0
        baseline_env = {**env, "KAFKA_TOPIC_PREFIX": prefix, "REDIS_KEY_PREFIX": f"{prefix[:-1]}:"}
        return send_rate(args, None, baseline_env, sandbox, tmp, expander=False)
    finally:
        settings.KAFKA_TOPIC_PREFIX = previous
        with contextlib.suppress(Exception):
            delete_topics_with_prefix(prefix)


@dataclass
class FanoutRun:
    """One fan-out benchmark's private world: its database, Kafka topic and Redis key prefix, a
    folder for process logs, and the sandbox to stop."""

    run: str
    tmp: Path
    sandbox: object | None = None
    keep_logs: bool = False


@contextlib.contextmanager
def fanout_run(database: str, tag: str, *, keep_database: bool):
    """Create the database, set Django up on it with prefixes of its own, migrate, create the topics;
    afterwards remove all of it (the process logs stay when ``keep_logs`` was set)."""
    run = uuid.uuid4().hex[:8]
    create_database(database)
    topic_prefix, redis_prefix = f"{tag}{run}.", f"{tag}{run}:"
    os.environ.update({"KAFKA_TOPIC_PREFIX": topic_prefix, "REDIS_KEY_PREFIX": redis_prefix, "LOG_LEVEL": "WARNING"})

    import django

    django.setup()
    import logging

    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from notifications.bus.kafka_admin import delete_topics_with_prefix, ensure_topics
    from notifications.redis_client import get_redis

    logging.getLogger("httpx").setLevel(logging.WARNING)
    assert settings.DATABASES["default"]["NAME"] == database
    redis_client = get_redis()
    state = FanoutRun(run=run, tmp=Path(tempfile.mkdtemp(prefix=f"{tag}{run}-")))
    try:
        log(f"migrating {database} ...")
        call_command("migrate", interactive=False, verbosity=0)
        ensure_topics()
        yield state
    finally:
        log("cleaning up ...")
        if state.keep_logs:
            log(f"process logs kept in {state.tmp}")
        else:
            shutil.rmtree(state.tmp, ignore_errors=True)
        if state.sandbox is not None:
            state.sandbox.stop()
        with contextlib.suppress(Exception):
            delete_topics_with_prefix(topic_prefix)
        with contextlib.suppress(Exception):
            delete_redis_prefix(redis_client, f"{redis_prefix}*")
        connection.close()
        if not keep_database:
            drop_database(database)


def main() -> int:
    args = parse_args()
    results: dict = {}
    with fanout_run(args.database, "benchcf", keep_database=args.keep_database) as bench:
        log(f"COPYing {args.users:,} users ...")
        results["load"] = load_users(args.users, args.opted_out, bench.run)
        log(f"loaded in {results['load']['copy']:.1f}s (+ ANALYZE {results['load']['analyze']:.1f}s)")
        campaign, launcher = setup_campaign(args)
        if args.wait_quiet:
            wait_for_quiet_machine(args.wait_quiet)
        log("emitting ...")
        results["emit"] = emit(args, campaign, launcher)
        log(f"emitted in {results['emit']['seconds']:.2f}s")
        if not args.skip_send:
            bench.sandbox, env = start_sms_sandbox(args)
            if args.wait_quiet:
                wait_for_quiet_machine(args.wait_quiet)
            log(f"send rate: {args.workers} worker(s) against a {args.contract_rate:g}/s contract ...")
            results["send"] = send_rate(args, campaign, env, bench.sandbox, bench.tmp)
            bench.keep_logs = results["send"]["unclean"]
            if not args.skip_baseline:
                if args.wait_quiet:
                    wait_for_quiet_machine(args.wait_quiet)
                log("baseline: the same workers on a pre-produced backlog, no campaign ...")
                results["baseline"] = worker_baseline(args, env, bench.sandbox, bench.tmp, bench.run)
                bench.keep_logs = bench.keep_logs or results["baseline"]["unclean"]
        print_report(args, results)
        emit_ok = results["emit"]["seconds"] <= EMIT_TARGET_SECONDS
        send_ok = args.skip_send or (results["send"]["share"] >= RATE_TARGET and not results["send"]["unclean"])
        return 0 if emit_ok and send_ok else 1


def print_report(args, results: dict) -> None:
    e = results["emit"]
    pages = e["page_times"]
    expected = math.ceil(e["audience"] / args.batch_size)
    per_channel = (
        ", ".join(f"{c}: {e['batch_messages'][c]} ({e['eligible'][c]:,} eligible users)" for c in CHANNELS)
        + f"; expected users / batch size = {e['audience']:,} / {args.batch_size:,} = {expected} per channel"
    )
    print(
        f"\nCampaign fan-out, {args.users:,} users ({args.opted_out:.0%} opted out of marketing e-mail and SMS), "
        f"batch size {args.batch_size:,}, channels {', '.join(CHANNELS)}"
    )
    print(
        f"  load (COPY)                 {results['load']['copy']:.1f} s (+ ANALYZE {results['load']['analyze']:.1f} s)"
    )
    verdict = "OK" if e["seconds"] <= EMIT_TARGET_SECONDS else "MISSED"
    print(
        f"  emit every batch            {e['seconds']:.2f} s   (target <= {EMIT_TARGET_SECONDS:.0f} s: {verdict}); "
        f"{e['pages']} pages, {args.users / e['seconds']:,.0f} users/s"
    )
    if pages:
        rest = sorted(pages[1:]) or [0.0]
        print(
            f"  per page                    first {pages[0] * 1000:.0f} ms (incl. audience count), then median "
            f"{rest[len(rest) // 2] * 1000:.0f} ms, max {rest[-1] * 1000:.0f} ms (query + produce + ack + checkpoint)"
        )
    print(f"  batch messages per channel  {per_channel}")
    print(
        f"  audience / suppressed       {e['audience']:,} matched; {e['suppressed']:,} (user, channel) pairs "
        f"suppressed in SQL"
    )
    print(f"  CPU during emission         {e['cpu']}")
    if "send" in results:
        s = results["send"]
        verdict = "OK" if s["share"] >= RATE_TARGET else "MISSED"
        print(
            f"  send rate while backlogged  {s['rate']:.1f}/s over {s['window']:.0f} s = {s['share']:.1%} of the "
            f"{args.contract_rate:g}/s contract (target >= {RATE_TARGET:.0%}: {verdict}); {args.workers} worker(s)"
        )
        print(f"  backlog at the window's end {s['waiting_at_end']:,} messages queued in notif.sms for the workers")
        print(
            f"  provider view               max in any 1 s window {s['max_1s']}, 429s in the window "
            f"{s['rate_limited']}, duplicate ids {s['duplicates']}, {s['total_accepted']:,} sent in all"
        )
        print(f"  CPU during the window       {s['cpu']}")
    if "baseline" in results:
        b, s = results["baseline"], results["send"]
        print(
            f"  workers alone (baseline)    {b['rate']:.1f}/s = {b['share']:.1%} of the contract on a backlog produced "
            f"up front (no campaign); end to end / baseline = {s['rate'] / b['rate']:.1%}"
        )
        print(f"  CPU during the baseline     {b['cpu']}")
    print(f"\nReproduce: .venv/bin/python {SCRIPT} " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
