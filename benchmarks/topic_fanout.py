"""Topic fan-out: one event to a 1,000,000-subscriber topic, and bulk subscription writes via the API.

    .venv/bin/python benchmarks/topic_fanout.py [--subscribers 1000000] [--batch-size 50000]
                                                [--contract-rate 500] [--workers 2] [--send-seconds 30]
                                                [--api-subscriptions 200000]

Issue targets (issue 16):

* emitting every batch of a fanout event to a 1,000,000-subscriber topic takes <= 5 s (keyset pages
  over the subscriptions' primary key joined with preferences and contact points, one Kafka message
  per page and channel, a checkpoint per page);
* end to end (batch expander -> channel workers -> provider sandbox enforcing the contract rate),
  the send rate while backlogged is >= 95% of the contract, with 0 duplicates;
* bulk subscription writes through `POST /api/v1/topics/{key}/subscribers` (10,000 ids per
  request) reach >= 50,000 subscriptions/s.

What it does, step by step: benchmarks/README.md, "topic_fanout.py".
"""

import argparse
import os
import shlex
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from _common import CpuMeter, log, postgres_pids, wait_for_quiet_machine  # noqa: E402
from campaign_fanout import (  # noqa: E402
    explain_first_page,
    fanout_run,
    load_users,
    page_until_emitted,
    send_rate,
    start_sms_sandbox,
    topic_counts,
)

SCRIPT = "benchmarks/topic_fanout.py"
TYPE_KEY = "bench.new_episode"
TOPIC, API_TOPIC = "bench:show", "bench:api"
CHANNELS = ("sms",)
EMIT_TARGET_SECONDS = 5.0
RATE_TARGET = 0.95
WRITE_TARGET = 50_000
IDS_PER_REQUEST = 10_000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=50_000)
    p.add_argument("--contract-rate", type=float, default=500.0, help="the sandbox's contract (sends/s)")
    p.add_argument("--burst", type=int, default=5, help="the Provider row's bucket burst")
    p.add_argument("--workers", type=int, default=2, help="run_worker --channel sms processes")
    p.add_argument("--warmup", type=float, default=8.0, help="seconds before the send-rate window opens")
    p.add_argument("--send-seconds", type=float, default=30.0, help="length of the send-rate window")
    p.add_argument("--api-subscriptions", type=int, default=200_000, help="subscriptions written through the API")
    p.add_argument("--write-clients", type=int, default=2, help="API clients writing subscriptions at once")
    p.add_argument("--skip-send", action="store_true", help="only measure the writes and the emission")
    p.add_argument("--database", default="bench_topics")
    p.add_argument("--keep-database", action="store_true", help="do not drop the database at the end")
    p.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of the first page query")
    p.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to this long for an idle machine per phase")
    args = p.parse_args()
    if not 1 <= args.batch_size <= 50_000:
        p.error("--batch-size must be between 1 and 50000")
    if not 1 <= args.write_clients <= 32:
        p.error("--write-clients must be between 1 and 32")
    args.max_backlog = None  # what campaign_fanout.send_rate reads
    args.profile_expander = None
    return args


def setup(args) -> tuple[list[int], str]:
    """The type (SMS template), the topic with every loaded user COPYed in as a subscriber, an API key."""
    import psycopg
    from django.contrib.auth import get_user_model

    from notifications.models import ApiKey, Category, NotificationTemplate, NotificationType, Urgency
    from notifications.outbox.relay import conninfo_from_django
    from subscriptions.models import Topic, TopicSubscription

    ntype = NotificationType.objects.create(
        key=TYPE_KEY, name="New episode", category=Category.PRODUCT, urgency=Urgency.NORMAL, default_channels=["sms"]
    )
    NotificationTemplate.objects.create(notification_type=ntype, channel="sms", body="New: {{ episode }}")
    topic = Topic.objects.create(key=TOPIC, name="Bench show")
    Topic.objects.create(key=API_TOPIC, name="Bench API writes")
    user_ids = list(get_user_model().objects.order_by("pk").values_list("pk", flat=True))
    now = datetime.now(UTC).isoformat()
    table = TopicSubscription._meta.db_table
    started = time.perf_counter()
    with psycopg.connect(conninfo_from_django(), application_name="bench_topic_copy") as conn:
        cur = conn.cursor()
        with cur.copy(f"COPY {table} (topic_id, user_id, created_at) FROM STDIN") as out:
            for start in range(0, len(user_ids), 50_000):
                out.write("".join(f"{topic.pk}\t{u}\t{now}\n" for u in user_ids[start : start + 50_000]))
        conn.commit()
        conn.autocommit = True
        conn.execute(f"VACUUM ANALYZE {table}")  # a topic's steady state: autovacuum has visited it
    log(f"{len(user_ids):,} subscriptions COPYed in {time.perf_counter() - started:.1f}s")
    _key, raw = ApiKey.generate(service="bench")
    return user_ids, raw


def api_writes(args, user_ids: list[int], raw_key: str) -> dict:
    """Subscribe --api-subscriptions users to API_TOPIC through the API, 10,000 per request from
    --write-clients clients at once (each with its own database connection); then again."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection
    from django.test import Client

    ids = [str(u) for u in user_ids[: args.api_subscriptions]]
    chunks = [ids[i : i + IDS_PER_REQUEST] for i in range(0, len(ids), IDS_PER_REQUEST)]

    def client_run(mine: list[list[str]]) -> tuple[int, int]:
        client = Client(HTTP_AUTHORIZATION=f"Api-Key {raw_key}")
        changed = unchanged = 0
        for chunk in mine:
            response = client.post(
                f"/api/v1/topics/{API_TOPIC}/subscribers", {"recipients": chunk}, content_type="application/json"
            )
            assert response.status_code == 200, response.content[:300]
            body = response.json()
            changed, unchanged = changed + body["changed"], unchanged + body["unchanged"]
        return changed, unchanged

    out = {}
    shares = [chunks[i :: args.write_clients] for i in range(args.write_clients)]
    connected = threading.Barrier(args.write_clients)

    def connect() -> None:  # before the CPU meter starts, so it counts the clients' backends
        connection.ensure_connection()
        connected.wait()

    with ThreadPoolExecutor(args.write_clients, initializer=connect) as pool:
        list(pool.map(lambda _: None, range(args.write_clients)))  # every client connected
        for phase in ("new", "again"):
            meter = CpuMeter({"bench (API)": lambda: [os.getpid()], "postgres": postgres_pids})
            meter.start()
            started = time.perf_counter()
            counts = list(pool.map(client_run, shares))
            elapsed = time.perf_counter() - started
            meter.stop()
            out[phase] = {
                "seconds": elapsed,
                "rate": len(ids) / elapsed,
                "changed": sum(c for c, _ in counts),
                "unchanged": sum(u for _, u in counts),
                "cpu": meter.summary(),
            }

        def disconnect(_: int) -> None:
            connection.close()
            connected.wait()  # one per client thread

        list(pool.map(disconnect, range(args.write_clients)))
    return out


def publish(raw_key: str) -> str:
    from django.test import Client

    body = {"event_id": f"bench-{uuid.uuid4().hex[:8]}", "type": TYPE_KEY, "target": {"topic": TOPIC}}
    client = Client(HTTP_AUTHORIZATION=f"Api-Key {raw_key}")
    response = client.post("/api/v1/events", {**body, "data": {"episode": "S1E2"}}, content_type="application/json")
    assert response.status_code == 202, response.content[:300]
    return response.json()["id"]


def emit(args, event_id: str) -> tuple[dict, object]:
    from confluent_kafka import Producer

    from campaigns.models import Campaign, CampaignLaunch
    from campaigns.orchestrator import CampaignOrchestrator
    from notifications.bus.config import producer_config
    from notifications.bus.topics import channel_topic
    from notifications.redis_client import get_redis

    fanout = Campaign.objects.get(launch_id=event_id)
    orchestrator = CampaignOrchestrator(
        producer=Producer(producer_config(**{"message.max.bytes": 2_000_000})),
        redis_client=get_redis(),
        batch_size=args.batch_size,
    )
    orchestrator.record_launches(
        [CampaignLaunch(launch_id=fanout.launch_id, campaign_id=fanout.pk, scheduled_for=fanout.launched_at)]
    )
    if args.explain:
        explain_first_page(fanout, args.batch_size, list(fanout.channels))
    elapsed, page_times, meter = page_until_emitted(orchestrator)
    fanout.refresh_from_db()
    launch = CampaignLaunch.objects.get(launch_id=fanout.launch_id)
    counts = topic_counts([channel_topic(c, "batch") for c in CHANNELS])
    result = {
        "seconds": elapsed,
        "pages": launch.next_batch,
        "page_times": page_times,
        "batch_messages": {c: counts[channel_topic(c, "batch")] for c in CHANNELS},
        "eligible": {c: launch.emitted_per_channel.get(c, 0) for c in CHANNELS},
        "audience": fanout.audience_size,
        "channels": fanout.channels,
        "cpu": meter.summary(),
    }
    return result, fanout


def main() -> int:
    args = parse_args()
    results: dict = {}
    with fanout_run(args.database, "benchtf", keep_database=args.keep_database) as bench:
        from django.conf import settings

        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
        log(f"COPYing {args.subscribers:,} users ...")
        results["load"] = load_users(args.subscribers, 0.0, bench.run)
        user_ids, raw_key = setup(args)
        if args.wait_quiet:
            wait_for_quiet_machine(args.wait_quiet)
        log(f"subscribing {args.api_subscriptions:,} through the API ...")
        results["writes"] = api_writes(args, user_ids, raw_key)
        log(f"written at {results['writes']['new']['rate']:,.0f}/s")
        if args.wait_quiet:
            wait_for_quiet_machine(args.wait_quiet)
        event_id = publish(raw_key)
        log("emitting ...")
        results["emit"], fanout = emit(args, event_id)
        log(f"emitted in {results['emit']['seconds']:.2f}s")
        if not args.skip_send:
            bench.sandbox, env = start_sms_sandbox(args)
            if args.wait_quiet:
                wait_for_quiet_machine(args.wait_quiet)
            log(f"send rate: {args.workers} worker(s) against a {args.contract_rate:g}/s contract ...")
            results["send"] = send_rate(args, fanout, env, bench.sandbox, bench.tmp)
            bench.keep_logs = results["send"]["unclean"]
        print_report(args, results)
        emit_ok = results["emit"]["seconds"] <= EMIT_TARGET_SECONDS
        write_ok = results["writes"]["new"]["rate"] >= WRITE_TARGET
        send_ok = args.skip_send or (
            results["send"]["share"] >= RATE_TARGET
            and not results["send"]["duplicates"]
            and not results["send"]["unclean"]
        )
        return 0 if emit_ok and write_ok and send_ok else 1


def print_report(args, results: dict) -> None:
    e, w = results["emit"], results["writes"]
    pages = e["page_times"]
    print(
        f"\nTopic fan-out, {args.subscribers:,} subscribers, batch size {args.batch_size:,}, channels {e['channels']}"
    )
    print(
        f"  load (COPY users)           {results['load']['copy']:.1f} s (+ ANALYZE {results['load']['analyze']:.1f} s)"
    )
    for phase, label in (("new", "new"), ("again", "repeated")):
        p = w[phase]
        verdict = f" (target >= {WRITE_TARGET:,}/s: {'OK' if p['rate'] >= WRITE_TARGET else 'MISSED'})"
        print(
            f"  API writes, {label:<8}        {p['rate']:,.0f} subscriptions/s ({args.api_subscriptions:,} in "
            f"{p['seconds']:.2f} s, {IDS_PER_REQUEST:,} per request, {args.write_clients} clients; "
            f"changed {p['changed']:,}, unchanged "
            f"{p['unchanged']:,}){verdict if phase == 'new' else ''}"
        )
        print(f"    CPU                       {p['cpu']}")
    verdict = "OK" if e["seconds"] <= EMIT_TARGET_SECONDS else "MISSED"
    print(
        f"  emit every batch            {e['seconds']:.2f} s   (target <= {EMIT_TARGET_SECONDS:.0f} s: {verdict}); "
        f"{e['pages']} pages, {args.subscribers / e['seconds']:,.0f} subscribers/s"
    )
    if pages:
        rest = sorted(pages[1:]) or [0.0]
        print(
            f"  per page                    first {pages[0] * 1000:.0f} ms (incl. audience count), then median "
            f"{rest[len(rest) // 2] * 1000:.0f} ms, max {rest[-1] * 1000:.0f} ms (query + produce + ack + checkpoint)"
        )
    print(
        "  batch messages per channel  "
        + ", ".join(f"{c}: {e['batch_messages'][c]} ({e['eligible'][c]:,} eligible)" for c in CHANNELS)
        + f"; audience {e['audience']:,}"
    )
    print(f"  CPU during emission         {e['cpu']}")
    if "send" in results:
        s = results["send"]
        verdict = "OK" if s["share"] >= RATE_TARGET else "MISSED"
        print(
            f"  send rate while backlogged  {s['rate']:.1f}/s over {s['window']:.0f} s = {s['share']:.1%} of the "
            f"{args.contract_rate:g}/s contract (target >= {RATE_TARGET:.0%}: {verdict}); {args.workers} worker(s)"
        )
        print(
            f"  provider view               max in any 1 s window {s['max_1s']}, 429s in the window "
            f"{s['rate_limited']}, duplicate ids {s['duplicates']}, {s['total_accepted']:,} sent in all"
        )
        print(f"  CPU during the window       {s['cpu']}")
    print(f"\nReproduce: .venv/bin/python {SCRIPT} " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
