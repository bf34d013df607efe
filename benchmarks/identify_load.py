"""Load test of the identify API on loopback: bulk upserts (recipients/s) and single upserts (req/s, p99).

    .venv/bin/python benchmarks/identify_load.py [--recipients 100000] [--bulk-size 1000]
                                                 [--bulk-concurrency 2] [--single-seconds 10]
                                                 [--single-concurrency 16] [--workers 2]

What it does, step by step: benchmarks/README.md, "identify_load.py".
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
BENCH_DATABASE = "notif_bench_identify"


def use_bench_database(name: str) -> None:
    """Point DATABASE_URL (this process and the server's) at database `name` on the same server."""
    base = os.environ.get("DATABASE_URL") or "postgres://notif:notif@127.0.0.1:55432/notifications"
    parts = urlsplit(base)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to run against a non-loopback database host: {parts.hostname}")
    with psycopg.connect(base, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(f'CREATE DATABASE "{name}"')
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{name}"))


use_bench_database(BENCH_DATABASE)

import django  # noqa: E402

django.setup()

import httpx  # noqa: E402
from _common import (  # noqa: E402
    CpuMeter,
    children_of,
    code_version,
    exit_on_sigterm,
    log,
    migrate_bench_database,
    postgres_pids,
    require_loopback,
)
from django.contrib.auth import get_user_model  # noqa: E402

from notifications.models import ApiKey  # noqa: E402
from preferences.models import RecipientProfile  # noqa: E402

TARGET_BULK_PER_SECOND = 5000


def recipient(run: str, i: int, *, updated: bool = False) -> dict:
    return {
        "id": f"{run}-{i}",
        "email": f"{run}-{i}@bench.example.com",
        "phone": f"+49151{i % 100_000_000:08d}",
        "locale": "de-CH" if updated else "en",
        "timezone": "Europe/Zurich",
        "attributes": {"plan": "pro" if i % 3 else "free", "n": i},
        "devices": [{"platform": "fcm", "token": f"{run}-token-{i}"}],
    }


def delete_run_recipients(run_id: str) -> int:
    """The run's users and their rows, in a few statements (the ORM's cascade loads every row first)."""
    from django.db import connection, transaction

    users = get_user_model()._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE run_users ON COMMIT DROP AS "
            "SELECT user_id FROM preferences_recipientprofile WHERE external_id LIKE %s",
            [f"{run_id}%"],
        )
        for table in ("preferences_device", "preferences_recipientprofile"):
            cursor.execute(f"DELETE FROM {table} WHERE user_id IN (SELECT user_id FROM run_users)")
        cursor.execute(f"DELETE FROM {users} WHERE id IN (SELECT user_id FROM run_users)")
        return cursor.rowcount


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def bulk_pass(client: httpx.AsyncClient, run: str, args, *, updated: bool) -> tuple[float, int, list[str]]:
    queue = list(range(0, args.recipients, args.bulk_size))
    failures: list[str] = []
    done = 0

    async def worker() -> None:
        nonlocal done
        while queue:
            start = queue.pop()
            end = min(start + args.bulk_size, args.recipients)
            items = [recipient(run, i, updated=updated) for i in range(start, end)]
            response = await client.post("/api/v1/recipients/bulk", json={"recipients": items})
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:200]}")
            else:
                done += end - start

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.bulk_concurrency)))
    return time.perf_counter() - started, done, failures


async def single_pass(client: httpx.AsyncClient, run: str, args) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    deadline = time.perf_counter() + args.single_seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            i = next(counter)
            body = recipient(f"{run}s", i % 2000, updated=i >= 2000)
            body.pop("id")
            t0 = time.perf_counter()
            response = await client.put(f"/api/v1/recipients/{run}s-{i % 2000}", json=body)
            latencies.append(time.perf_counter() - t0)
            errors += response.status_code not in (200, 201)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.single_concurrency)))
    return time.perf_counter() - started, latencies, errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, workers: int):
    import subprocess

    env = dict(os.environ, DJANGO_DEBUG="0", LOG_LEVEL="WARNING", METRICS_PORT="0")
    cmd = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers), "--log-level", "warning", "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                time.sleep(1.0)
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise SystemExit("uvicorn did not answer /healthz within 60 s")


def cpu_meter(server_pid: int) -> CpuMeter:
    """CPU of this process (the HTTP client), the uvicorn processes and PostgreSQL."""
    return CpuMeter(
        {
            "client": lambda: [os.getpid()],
            "uvicorn": lambda: [server_pid, *children_of(server_pid)],
            "postgres": postgres_pids,
        }
    )


async def metered_bulk_pass(client, run_id: str, args, server_pid: int, *, updated: bool) -> tuple:
    meter = cpu_meter(server_pid)
    meter.start()
    seconds, done, failures = await bulk_pass(client, run_id, args, updated=updated)
    meter.stop()
    return seconds, done, failures, meter


async def run(args, port: int, raw_key: str, run_id: str, server_pid: int) -> dict:
    headers = {"Authorization": f"Api-Key {raw_key}"}
    limits = httpx.Limits(max_connections=max(args.bulk_concurrency, args.single_concurrency))
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120, limits=limits
    ) as client:
        log(f"bulk: {args.recipients:,} new recipients in requests of {args.bulk_size}")
        create = await metered_bulk_pass(client, run_id, args, server_pid, updated=False)
        log("bulk: the same recipients again (updates)")
        update = await metered_bulk_pass(client, run_id, args, server_pid, updated=True)
        log(f"single: PUT for {args.single_seconds:g} s at concurrency {args.single_concurrency}")
        single = await single_pass(client, run_id, args)
    return {"create": create, "update": update, "single": single}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--bulk-size", type=int, default=1000)
    ap.add_argument("--bulk-concurrency", type=int, default=2)
    ap.add_argument("--single-seconds", type=float, default=10.0)
    ap.add_argument("--single-concurrency", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    require_loopback()
    exit_on_sigterm()
    migrate_bench_database()
    run_id = f"bi{secrets.token_hex(3)}"
    api_key, raw_key = ApiKey.generate(service="bench-identify")
    proc = None
    try:
        port = free_port()
        proc = start_server(port, args.workers)
        results = asyncio.run(run(args, port, raw_key, run_id, proc.pid))
        stored = RecipientProfile.objects.filter(external_id__startswith=f"{run_id}-").count()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        removed = delete_run_recipients(run_id)
        api_key.delete()
        log(f"cleanup: deleted {removed:,} users with their profiles and devices, and the API key")

    print()
    print(f"Identify API on uvicorn ({args.workers} workers), 127.0.0.1; code {code_version()}")
    print(f"NOTE: {os.cpu_count()} CPU cores shared by the client, the server and PostgreSQL.")
    for label in ("create", "update"):
        seconds, done, failures, meter = results[label]
        rate = done / seconds if seconds else 0.0
        verdict = "meets" if rate >= TARGET_BULK_PER_SECOND else "BELOW"
        print(
            f"bulk {label:<6} {done:>9,} recipients in {seconds:6.1f} s = {rate:>8,.0f} recipients/s "
            f"({verdict} the {TARGET_BULK_PER_SECOND:,}/s target); failed requests {len(failures)}"
        )
        per_thousand = ", ".join(f"{name} {sec / max(done, 1) * 1e6:,.0f} ms" for name, sec in meter.used.items())
        print(f"    CPU per 1,000 recipients: {per_thousand}")
        print(f"    {meter.summary()}")
        for failure in failures[:3]:
            print(f"    {failure}")
    seconds, latencies, errors = results["single"]
    print(
        f"single PUT  {len(latencies):>9,} requests in {seconds:6.1f} s = {len(latencies) / seconds:>8,.0f} req/s at "
        f"concurrency {args.single_concurrency}; p50 {percentile(latencies, 0.5) * 1e3:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1e3:.1f} ms; errors {errors}"
    )
    ok = stored == args.recipients and not results["create"][2] and not results["update"][2] and not errors
    print(f"verification: {stored:,} of {args.recipients:,} recipients stored -> {'OK' if ok else 'FAILED'}")
    print(
        "reproduce: .venv/bin/python benchmarks/identify_load.py "
        f"--recipients {args.recipients} --bulk-size {args.bulk_size} --bulk-concurrency {args.bulk_concurrency} "
        f"--single-seconds {args.single_seconds:g} --single-concurrency {args.single_concurrency} "
        f"--workers {args.workers}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
