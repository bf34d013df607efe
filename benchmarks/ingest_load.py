"""Load test of `POST /api/v1/events` through gunicorn, on loopback.

    .venv/bin/python benchmarks/ingest_load.py [--duration 15] [--concurrency 16] [--workers 2]
                                               [--threads 4] [--requests N] [--client raw|httpx]

What it does:

1. Creates the NotificationType `bench.event` (unless it exists) and an API key for service "bench";
   refuses to start if a `relay_outbox` is connected (it would drain the rows being counted).
2. Starts gunicorn (`config.wsgi`, gthread, --workers x --threads) on a free 127.0.0.1 port with its
   own environment: a unique KAFKA_TOPIC_PREFIX (so the run's outbox rows are recognisable by topic),
   DJANGO_DEBUG=0, LOG_LEVEL=WARNING, METRICS_PORT=0.
3. Runs two scenarios, each for --duration seconds (or --requests requests, whichever ends first),
   with --concurrency keep-alive connections driven by one asyncio loop:
   `single` (one event, one recipient per request) and `batch` (100 such events per request).
   It reports requests/s, events/s, latency percentiles, errors, and the CPU each party used.
4. Checks that the outbox grew by exactly the number of accepted events (rows with the run's topic)
   and that "bench" AcceptedEvent rows grew by the same number.
5. Cleans up: stops gunicorn, deletes the run's outbox rows, the AcceptedEvent rows of service
   "bench", the API key and the type (if this run created it).

The machine has 2 cores: the load client, gunicorn and PostgreSQL share them, so the figures are a
floor for what the server does on its own. The default client is a minimal asyncio HTTP/1.1 client
(much cheaper per request than httpx); its CPU share is printed with the results.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402
from _common import CpuMeter, children_of, cpu_ticks, log, postgres_pids  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from notifications.bus.kafka_admin import delete_topics_with_prefix  # noqa: E402
from notifications.bus.topics import topic_name  # noqa: E402
from notifications.models import AcceptedEvent, ApiKey, NotificationType, OutboxEvent  # noqa: E402
from notifications.outbox.relay import APPLICATION_NAME  # noqa: E402

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

    def __init__(self, port: int, headers: bytes) -> None:
        self.port = port
        self.head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode() + headers
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
) -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    budget = [max_requests if max_requests is not None else 1 << 62]
    stop_at = time.perf_counter() + duration

    async def worker(conn) -> None:
        sent = 0
        while time.perf_counter() < stop_at and budget[0] > 0:
            budget[0] -= 1
            sent += 1
            if reconnect_every and sent % reconnect_every == 0:
                await conn.close()  # the raw client reconnects on the next post
            body = make_body()
            t0 = time.perf_counter()
            try:
                status = await conn.post(body)
                label = str(status)
            except Exception as exc:  # a failed request is a data point, not a crash
                label = type(exc).__name__
            if label == "202":
                latencies.append(time.perf_counter() - t0)
            statuses[label] = statuses.get(label, 0) + 1
        await conn.close()

    started = time.perf_counter()
    if client_kind == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            headers = {"Authorization": f"Api-Key {raw_key}", "Content-Type": "application/json"}
            await asyncio.gather(*(worker(HttpxConnection(client, port, headers)) for _ in range(concurrency)))
    else:
        headers = f"Authorization: Api-Key {raw_key}\r\nContent-Type: application/json\r\n".encode()
        await asyncio.gather(*(worker(RawConnection(port, headers)) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ok = statuses.get("202", 0)
    return {
        "elapsed": elapsed,
        "requests": sum(statuses.values()),
        "accepted_requests": ok,
        "accepted_events": ok * events_per_request,
        "errors": sum(v for k, v in statuses.items() if k != "202"),
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


def start_gunicorn(args, port: int, prefix: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="config.settings",
        KAFKA_TOPIC_PREFIX=prefix,
        DJANGO_DEBUG="0",
        LOG_LEVEL="WARNING",
        METRICS_PORT="0",
    )
    cmd = [
        str(REPO / ".venv" / "bin" / "gunicorn"),
        "config.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "-k",
        args.worker_class,
        "--log-level",
        "warning",
    ]
    log("starting " + " ".join(shlex.quote(c) for c in cmd))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("gunicorn did not answer /healthz within 30 s")


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


def relays_connected() -> int:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            [APPLICATION_NAME],
        )
        return cur.fetchone()[0]


# --- main ---------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per scenario (default 15)")
    ap.add_argument("--requests", type=int, default=None, help="at most this many requests per scenario")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent keep-alive connections (default 16)")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    ap.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (default 4)")
    ap.add_argument("--worker-class", default="gthread", help="gunicorn worker class (default gthread)")
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
    return ap.parse_args()


def reproduce_command(args: argparse.Namespace) -> str:
    parts = [
        ".venv/bin/python",
        SCRIPT,
        "--duration",
        args.duration,
        "--concurrency",
        args.concurrency,
        "--workers",
        args.workers,
        "--threads",
        args.threads,
        "--worker-class",
        args.worker_class,
        "--client",
        args.client,
        "--reconnect-every",
        args.reconnect_every,
        "--data-bytes",
        args.data_bytes,
        "--scenarios",
        args.scenarios,
    ]
    if args.requests is not None:
        parts += ["--requests", args.requests]
    return " ".join(shlex.quote(str(p)) for p in parts)


def main() -> int:
    args = parse_args()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if not set(scenarios) <= {"single", "batch"}:
        sys.exit("--scenarios takes single and/or batch")
    if relays_connected():
        sys.exit("refusing to run: a relay_outbox is connected and would drain the outbox rows being counted")

    run_id = secrets.token_hex(4)
    prefix = f"bench-ingest-{run_id}-"
    settings.KAFKA_TOPIC_PREFIX = prefix  # topic_name() below must match what the server writes
    topic = topic_name("events")
    port = free_port()

    created_type = False
    api_key = None
    server = None
    results: dict[str, dict] = {}
    cpu: dict[str, str] = {}
    costs: dict[str, tuple[float, float]] = {}
    accepted_before = AcceptedEvent.objects.filter(service=SERVICE).count()
    try:
        _, created_type = NotificationType.objects.get_or_create(
            key=TYPE_KEY, defaults={"name": "Benchmark event", "enabled": True}
        )
        api_key, raw_key = ApiKey.generate(service=SERVICE)
        server = start_gunicorn(args, port, prefix)
        connection.close()  # don't hold an idle connection while the server works
        bodies = Bodies(run_id, args.data_bytes)

        def server_pids() -> list[int]:
            return [server.pid, *children_of(server.pid)]

        # Warm-up (not measured): every worker thread opens its DB connection, caches are filled.
        log("warm-up")
        warm = asyncio.run(
            run_scenario(
                port=port,
                raw_key=raw_key,
                make_body=bodies.single,
                events_per_request=1,
                concurrency=args.concurrency,
                duration=2.0,
                max_requests=None,
                client_kind=args.client,
            )
        )
        results["warm-up"] = warm
        for name in scenarios:
            log(f"scenario {name}: {args.duration}s, {args.concurrency} connections")
            meter = CpuMeter({"gunicorn": server_pids, "postgres": postgres_pids, "client": lambda: [os.getpid()]})
            meter.start()
            workers_before = cpu_ticks(children_of(server.pid))
            results[name] = asyncio.run(
                run_scenario(
                    port=port,
                    raw_key=raw_key,
                    make_body=bodies.single if name == "single" else bodies.batch,
                    events_per_request=1 if name == "single" else BATCH,
                    concurrency=args.concurrency,
                    duration=args.duration,
                    max_requests=args.requests,
                    client_kind=args.client,
                    reconnect_every=args.reconnect_every,
                )
            )
            meter.stop()
            tick = os.sysconf("SC_CLK_TCK")
            per_worker = [
                (t - workers_before.get(pid, 0)) / tick / meter.wall
                for pid, t in sorted(cpu_ticks(children_of(server.pid)).items())
            ]
            cpu[name] = meter.summary() + "; per gunicorn worker " + ", ".join(f"{x:.0%}" for x in per_worker)
            costs[name] = (meter.used["gunicorn"], meter.used["postgres"])
            if meter.other_share > 0.15:
                cpu[name] += (
                    f"\n  WARNING: other processes used {meter.other_share:.0%} of a core meanwhile; "
                    "these figures are depressed - rerun on a quiet machine"
                )
        stop_process(server)
        rows_written = outbox_rows(topic)
        accepted_after = AcceptedEvent.objects.filter(service=SERVICE).count()
    finally:
        stop_process(server)
        deleted_rows = OutboxEvent.objects.filter(topic__startswith=prefix).delete()[0]
        deleted_accepted = AcceptedEvent.objects.filter(service=SERVICE).delete()[0]
        if api_key is not None:
            api_key.delete()
        if created_type:
            NotificationType.objects.filter(key=TYPE_KEY).delete()
        delete_topics_with_prefix(prefix)  # the ingest creates none; this is belt and braces
        log(
            f"cleanup: deleted {deleted_rows} outbox rows, {deleted_accepted} accepted events, the API key"
            + (", the type" if created_type else "")
        )

    accepted_events = sum(r["accepted_events"] for r in results.values())
    ok = rows_written == accepted_events and accepted_after - accepted_before == accepted_events

    print()
    print(
        f"Ingest load: POST {PATH} via gunicorn {args.worker_class} --workers {args.workers} --threads "
        f"{args.threads}; {args.concurrency} keep-alive connections (reopened every {args.reconnect_every} requests) "
        f"from one asyncio {args.client} client; {args.duration:g}s per scenario"
    )
    print(
        f"NOTE: {os.cpu_count()} CPU cores shared by the load client, gunicorn and PostgreSQL (plus Kafka idling):"
        " server figures are a floor."
    )
    header = (
        f"{'scenario':<22}{'requests':>9}{'req/s':>9}{'events/s':>10}{'p50 ms':>9}{'p90 ms':>9}"
        f"{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in scenarios:
        r = results[name]
        lat = r["latencies"]
        label = "single (1 event)" if name == "single" else f"batch ({BATCH} events)"
        print(
            f"{label:<22}{r['requests']:>9,}{r['accepted_requests'] / r['elapsed']:>9,.0f}"
            f"{r['accepted_events'] / r['elapsed']:>10,.0f}{percentile(lat, 0.5) * 1e3:>9.1f}"
            f"{percentile(lat, 0.9) * 1e3:>9.1f}{percentile(lat, 0.99) * 1e3:>9.1f}"
            f"{(lat[-1] if lat else float('nan')) * 1e3:>9.1f}{r['errors']:>8}"
        )
    print("-" * len(header))
    for name in scenarios:
        statuses = results[name]["statuses"]
        if set(statuses) != {"202"}:
            print(f"{name}: responses {statuses}")
        print(f"{name}: CPU {cpu[name]}")
    print(
        "CPU cost per accepted request (steadier than req/s on a shared machine) and the ceiling it implies "
        f"if gunicorn and PostgreSQL had all {os.cpu_count()} cores:"
    )
    for name in scenarios:
        r = results[name]
        if not r["accepted_requests"]:
            continue
        g, pg = (x / r["accepted_requests"] * 1e3 for x in costs[name])
        per_event = r["accepted_requests"] / r["accepted_events"]
        ceiling = (os.cpu_count() or 1) * 1e3 / (g + pg)
        print(
            f"  {name:<7} gunicorn {g:6.2f} ms + postgres {pg:5.2f} ms per request "
            f"({g * per_event:.3f} + {pg * per_event:.3f} ms per event) -> ~{ceiling:,.0f} req/s, "
            f"~{ceiling / per_event:,.0f} events/s"
        )
    print(
        f"verification: accepted events {accepted_events:,} (incl. {results['warm-up']['accepted_events']:,} "
        f"warm-up), outbox rows written {rows_written:,}, AcceptedEvent rows +{accepted_after - accepted_before:,}"
        f"  -> {'OK' if ok else 'FAILED'}"
    )
    print(f"reproduce: {reproduce_command(args)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
