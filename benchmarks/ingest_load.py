"""Load test of `POST /api/v1/events` through uvicorn (ASGI) and gunicorn gthread (WSGI), side by side, on loopback.

    .venv/bin/python benchmarks/ingest_load.py [--servers gthread,uvicorn] [--duration 15] [--concurrency 16]
                                               [--workers 2] [--threads 4] [--requests N] [--client raw|httpx]

What it does, step by step: benchmarks/README.md, "ingest_load.py".
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402
from _common import CpuMeter, children_of, kafka_pids, log, postgres_pids, require_migrated  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from notifications.bus.kafka_admin import delete_topics_with_prefix  # noqa: E402
from notifications.bus.topics import topic_name  # noqa: E402
from notifications.models import AcceptedEvent, ApiKey, NotificationType, OutboxEvent  # noqa: E402

SCRIPT = "benchmarks/ingest_load.py"
SERVICE = "bench"
TYPE_KEY = "bench.event"
PATH = "/api/v1/events"
BATCH = 100


# --- request bodies -------------------------------------------------------------------------------
class Bodies:
    """Unique event ids per run, so no request is ever a duplicate."""

    def __init__(self, run_id: str, data_bytes: int) -> None:
        self.run_id = run_id
        self.counter = 0
        filler = "Your order 1234 has shipped and will arrive tomorrow. " * (data_bytes // 50 + 1)
        self.data = {"order_number": "1234", "carrier": "DHL", "note": filler[: max(0, data_bytes - 60)]}

    def _event(self) -> dict:
        self.counter += 1
        return {
            "event_id": f"{self.run_id}-{self.counter}",
            "type": TYPE_KEY,
            "recipients": [str(1_000_000 + self.counter % 10_000)],
            "data": self.data,
        }

    def single(self) -> bytes:
        return orjson.dumps(self._event())

    def batch(self) -> bytes:
        return orjson.dumps({"events": [self._event() for _ in range(BATCH)]})


# --- load clients ---------------------------------------------------------------------------------
class RawConnection:
    """A minimal keep-alive HTTP/1.1 client over asyncio streams (enough for gunicorn's replies)."""

    def __init__(self, port: int, headers: bytes, *, method: str = "POST", path: str = PATH) -> None:
        self.port = port
        self.head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode() + headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            self.writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await self.writer.drain()
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("server closed the connection")
            status = int(status_line.split()[1])
            length, chunked, close = 0, False, False
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            if chunked:
                while size := int((await self.reader.readline()).split(b";")[0], 16):
                    await self.reader.readexactly(size + 2)
                await self.reader.readline()
            else:
                await self.reader.readexactly(length)
            if close:
                await self.close()
            return status
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            await self.close()
            raise

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class HttpxConnection:
    def __init__(self, client, port: int, headers: dict[str, str]) -> None:
        self.client, self.url, self.headers = client, f"http://127.0.0.1:{port}{PATH}", headers

    async def post(self, body: bytes) -> int:
        response = await self.client.post(self.url, content=body, headers=self.headers)
        return response.status_code

    async def close(self) -> None:
        pass


async def run_scenario(
    *,
    port: int,
    raw_key: str,
    make_body,
    events_per_request: int,
    concurrency: int,
    duration: float,
    max_requests: int | None,
    client_kind: str,
    reconnect_every: int = 0,
    rate: float | None = None,
    method: str = "POST",
    path: str = PATH,
    ok_status: str = "202",
) -> dict:
    """`concurrency` connections send requests back to back, or (with `rate`) request i at start + i / rate."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    budget = [max_requests if max_requests is not None else 1 << 62]
    stop_at = time.perf_counter() + duration
    started = time.perf_counter()
    issued = [0]

    async def worker(conn) -> None:
        sent = 0
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            sent += 1
            if rate:
                due = started + issued[0] / rate
                issued[0] += 1
                if due > time.perf_counter():
                    await asyncio.sleep(due - time.perf_counter())
            if reconnect_every and sent % reconnect_every == 0:
                await conn.close()  # the raw client reconnects on the next post
            body = make_body()
            t0 = time.perf_counter()
            try:
                status = await conn.post(body)
                label = str(status)
            except Exception as exc:  # a failed request is a data point, not a crash
                label = type(exc).__name__
            if label == ok_status:
                latencies.append(time.perf_counter() - t0)
            statuses[label] = statuses.get(label, 0) + 1
        await conn.close()

    if client_kind == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            headers = {"Authorization": f"Api-Key {raw_key}", "Content-Type": "application/json"}
            await asyncio.gather(*(worker(HttpxConnection(client, port, headers)) for _ in range(concurrency)))
    else:
        headers = f"Authorization: Api-Key {raw_key}\r\nContent-Type: application/json\r\n".encode()
        await asyncio.gather(
            *(worker(RawConnection(port, headers, method=method, path=path)) for _ in range(concurrency))
        )
    elapsed = time.perf_counter() - started
    ok = statuses.get(ok_status, 0)
    return {
        "elapsed": elapsed,
        "requests": sum(statuses.values()),
        "accepted_requests": ok,
        "accepted_events": ok * events_per_request,
        "errors": sum(v for k, v in statuses.items() if k != ok_status),
        "statuses": statuses,
        "latencies": sorted(latencies),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# --- server ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(prefix: str) -> dict[str, str]:
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="config.settings",
        KAFKA_TOPIC_PREFIX=prefix,
        DJANGO_DEBUG="0",
        LOG_LEVEL="WARNING",
        METRICS_PORT="0",
    )


def start_server(args, server: str, port: int, prefix: str) -> subprocess.Popen:
    """`gthread`: gunicorn, WSGI, --workers x --threads; `uvicorn`: uvicorn, ASGI, --workers."""
    if server == "gthread":
        cmd = [str(REPO / ".venv" / "bin" / "gunicorn"), "config.wsgi", "--bind", f"127.0.0.1:{port}",
               "--workers", str(args.workers), "--threads", str(args.threads), "-k", "gthread",
               "--log-level", "warning"]  # fmt: skip
    else:
        cmd = [str(REPO / ".venv" / "bin" / "uvicorn"), "config.asgi:application", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(args.workers), "--log-level", "warning",
               "--no-access-log"]  # fmt: skip
    log("starting " + " ".join(shlex.quote(c) for c in cmd))
    proc = subprocess.Popen(cmd, cwd=REPO, env=server_env(prefix))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    time.sleep(1.0)  # every worker process up
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"{server} did not answer /healthz within 30 s")


def start_relay(prefix: str) -> subprocess.Popen:
    """The outbox relay for the run's topics (the platform as it runs: rows leave the outbox)."""
    cmd = [str(REPO / ".venv" / "bin" / "python"), "manage.py", "relay_outbox"]
    return subprocess.Popen(cmd, cwd=REPO, env=server_env(prefix))


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- database -------------------------------------------------------------------------------------------
def outbox_rows(topic: str) -> int:
    with connection.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {OutboxEvent._meta.db_table} WHERE topic = %s", [topic])
        return cur.fetchone()[0]


# --- main ---------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    ap.add_argument("--requests", type=int, default=None, help="at most this many requests per measurement")
    ap.add_argument("--concurrency", default="16,64,256", help="connections, comma-separated (default 16,64,256)")
    ap.add_argument("--servers", default="gthread,uvicorn", help="gthread (WSGI) and/or uvicorn (ASGI)")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    ap.add_argument("--threads", type=int, default=8, help="gthread: threads per worker (default 8, the Procfile's)")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw", help="load client (default raw asyncio)")
    ap.add_argument(
        "--reconnect-every",
        type=int,
        default=10,
        help="raw client: reopen each connection after this many requests (default 10; 0 = never). gthread\n"
        "workers keep every connection they accept, so never reconnecting can leave a worker idle",
    )
    ap.add_argument("--data-bytes", type=int, default=200, help="approximate size of each event's data")
    ap.add_argument("--scenarios", default="single,batch", help="comma-separated: single, batch")
    ap.add_argument("--no-relay", action="store_true", help="leave the rows in the outbox (no relay running)")
    return ap.parse_args()


def reproduce_command(args: argparse.Namespace) -> str:
    parts = [".venv/bin/python", SCRIPT, "--duration", args.duration, "--concurrency", args.concurrency,
             "--servers", args.servers, "--workers", args.workers, "--threads", args.threads, "--client",
             args.client, "--reconnect-every", args.reconnect_every, "--data-bytes", args.data_bytes,
             "--scenarios", args.scenarios]  # fmt: skip
    if args.requests is not None:
        parts += ["--requests", args.requests]
    if args.no_relay:
        parts.append("--no-relay")
    return " ".join(shlex.quote(str(p)) for p in parts)


@dataclass
class Row:
    server: str
    label: str
    concurrency: int
    result: dict
    gunicorn_cpu: float  # seconds of the server's CPU
    postgres_cpu: float
    note: str = ""
    hidden: bool = False  # counted (verification), not printed


def measure(args, *, server: str, proc, relay, label: str, concurrency: int, raw_key: str, **kwargs) -> Row:
    log(f"{server}: {label}, {concurrency} connections")
    meter = CpuMeter({"server": lambda: [proc.pid, *children_of(proc.pid)], "postgres": postgres_pids,
                      "client": lambda: [os.getpid()],
                      "relay and kafka": lambda: ([relay.pid] if relay else []) + kafka_pids()})  # fmt: skip
    meter.start()
    result = asyncio.run(
        run_scenario(
            port=kwargs.pop("port"),
            raw_key=raw_key,
            concurrency=concurrency,
            duration=args.duration,
            max_requests=args.requests,
            client_kind=args.client,
            reconnect_every=args.reconnect_every,
            **kwargs,
        )
    )
    meter.stop()
    note = f"other processes {meter.other_share:.0%} of a core" if meter.other_share > 0.15 else ""
    return Row(server, label, concurrency, result, meter.used["server"], meter.used["postgres"], note)


def run_server(args, server: str, scenarios: list[str], levels: list[int], raw_key: str, bodies, prefix: str, relay):
    """Every measurement against one server: the ceiling, each scenario at each level, single at half load."""
    port = free_port()
    proc = start_server(args, server, port, prefix)
    rows: list[Row] = []
    try:
        connection.close()  # don't hold an idle connection while the server works
        common = {"server": server, "proc": proc, "relay": relay, "raw_key": raw_key, "port": port}
        log(f"{server}: warm-up")
        warm = asyncio.run(
            run_scenario(
                port=port,
                raw_key=raw_key,
                make_body=bodies.single,
                events_per_request=1,
                concurrency=16,
                duration=2.0,
                max_requests=None,
                client_kind=args.client,
            )
        )
        rows.append(Row(server, "warm-up", 16, warm, 0.0, 0.0, hidden=True))
        rows.append(
            measure(
                args,
                label="ceiling (GET /healthz)",
                concurrency=max(levels),
                make_body=lambda: b"",
                events_per_request=0,
                method="GET",
                path="/healthz",
                ok_status="200",
                **common,
            )
        )
        for name in scenarios:
            for level in levels:
                rows.append(
                    measure(
                        args,
                        label=f"{name} ({1 if name == 'single' else BATCH} ev/req)",
                        concurrency=level,
                        make_body=bodies.single if name == "single" else bodies.batch,
                        events_per_request=1 if name == "single" else BATCH,
                        **common,
                    )
                )
        if "single" in scenarios:
            best = max(
                r.result["accepted_requests"] / r.result["elapsed"] for r in rows if r.label.startswith("single")
            )
            rows.append(measure(args, label=f"single at half load ({best / 2:,.0f}/s)", concurrency=max(levels),
                                make_body=bodies.single, events_per_request=1, rate=best / 2, **common))  # fmt: skip
    finally:
        stop_process(proc)
    return rows


def produced_to_kafka(prefix: str) -> int:
    """Messages in the run's events topics (both lanes): what the relay moved."""
    from confluent_kafka import Consumer, TopicPartition

    from notifications.bus.config import consumer_config

    consumer = Consumer(consumer_config(f"bench-count-{prefix}"))
    total = 0
    try:
        for topic in (topic_name("events"), topic_name("events.bulk")):
            for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                total += high - low
    finally:
        consumer.close()
    return total


def main() -> int:
    args = parse_args()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not set(scenarios) <= {"single", "batch"} or not set(servers) <= {"gthread", "uvicorn"} or not levels:
        sys.exit("--scenarios takes single, batch; --servers gthread, uvicorn; --concurrency numbers")

    require_migrated()
    run_id = secrets.token_hex(4)
    prefix = f"bench-ingest-{run_id}."
    settings.KAFKA_TOPIC_PREFIX = prefix  # topic_name() below must match what the server writes
    from notifications.bus.kafka_admin import ensure_topics

    created_type = False
    api_key = None
    relay = None
    rows: list[Row] = []
    accepted_before = AcceptedEvent.objects.filter(service=SERVICE).count()
    try:
        ensure_topics()
        _, created_type = NotificationType.objects.get_or_create(
            key=TYPE_KEY, defaults={"name": "Benchmark event", "enabled": True}
        )
        api_key, raw_key = ApiKey.generate(service=SERVICE)
        relay = None if args.no_relay else start_relay(prefix)
        bodies = Bodies(run_id, args.data_bytes)
        for server in servers:
            rows += run_server(args, server, scenarios, levels, raw_key, bodies, prefix, relay)
        accepted_events = sum(r.result["accepted_events"] for r in rows)
        accepted_after = AcceptedEvent.objects.filter(service=SERVICE).count()
        deadline = time.monotonic() + 120
        while not args.no_relay and OutboxEvent.objects.filter(topic__startswith=prefix).exists():
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        in_outbox = OutboxEvent.objects.filter(topic__startswith=prefix).count()
        in_kafka = produced_to_kafka(prefix)
    finally:
        stop_process(relay)
        deleted_rows = OutboxEvent.objects.filter(topic__startswith=prefix).delete()[0]
        deleted_accepted = AcceptedEvent.objects.filter(service=SERVICE).delete()[0]
        if api_key is not None:
            api_key.delete()
        if created_type:
            NotificationType.objects.filter(key=TYPE_KEY).delete()
        delete_topics_with_prefix(prefix)
        log(f"cleanup: deleted {deleted_rows} outbox rows, {deleted_accepted} accepted events, the API key, the topics")

    stored = accepted_after - accepted_before
    print()
    print(
        f"Ingest load: POST {PATH}; servers {', '.join(servers)} ({args.workers} workers; gthread {args.threads} "
        f"threads each), {'with' if not args.no_relay else 'without'} the outbox relay running; raw asyncio "
        f"client, keep-alive connections (reopened every {args.reconnect_every} requests); {args.duration:g} s each"
    )
    print(f"NOTE: {os.cpu_count()} CPU cores shared by the load client, the server, the relay, PostgreSQL and Kafka.")
    header = (f"{'server':<9}{'measurement':<32}{'conn':>5}{'req/s':>9}{'events/s':>10}{'p50 ms':>8}{'p99 ms':>8}"
              f"{'errors':>7}{'srv ms/ev':>10}{'pg ms/ev':>9}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for row in (r for r in rows if not r.hidden):
        r, lat = row.result, row.result["latencies"]
        units = r["accepted_events"] or r["accepted_requests"]
        print(
            f"{row.server:<9}{row.label:<32}{row.concurrency:>5}{r['accepted_requests'] / r['elapsed']:>9,.0f}"
            f"{r['accepted_events'] / r['elapsed']:>10,.0f}{percentile(lat, 0.5) * 1e3:>8.1f}"
            f"{percentile(lat, 0.99) * 1e3:>8.1f}{r['errors']:>7}"
            f"{(row.gunicorn_cpu / units * 1e3) if units else float('nan'):>10.3f}"
            f"{(row.postgres_cpu / units * 1e3) if units else float('nan'):>9.3f}"
            + (f"  ({row.note})" if row.note else "")
        )
        if set(r["statuses"]) - {"202", "200"}:
            print(f"{'':<9}responses {r['statuses']}")
    print("-" * len(header))
    for server in servers:
        ceiling = next(r for r in rows if r.server == server and r.label.startswith("ceiling"))
        top = ceiling.result["accepted_requests"] / ceiling.result["elapsed"]
        single = [r for r in rows if r.server == server and r.label.startswith("single (")]
        best = max((r.result["accepted_requests"] / r.result["elapsed"] for r in single), default=0.0)
        print(
            f"{server}: best single events/s {best:,.0f} = {best / top:.0%} of the minimal endpoint's {top:,.0f} req/s"
        )
    ok = stored == accepted_events and (args.no_relay or (in_outbox == 0 and in_kafka == stored))
    print(
        f"verification: accepted events {accepted_events:,}, AcceptedEvent rows +{stored:,}, relayed to Kafka "
        f"{in_kafka:,}, left in the outbox {in_outbox:,}  -> {'OK' if ok else 'FAILED'}"
    )
    print(f"reproduce: {reproduce_command(args)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
