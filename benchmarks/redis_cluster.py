"""Dedup claims/confirms and slot bookings on one Redis node vs a Redis Cluster of three masters (loopback only).

    .venv/bin/python benchmarks/redis_cluster.py [--seconds 5] [--clients 1,4] [--batch 200] [--buckets 4]
                                                 [--memory-keys 1000000] [--e2e-messages 10000]

What it does, step by step: benchmarks/README.md, "redis_cluster.py".
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    REPO,
    code_version,
    cpu_ticks,
    delete_redis_prefix,
    log,
    redis_ports,
    redis_server_pids,
)

BOOK_SLOTS = 20
BOOK_RATE = 1_000_000.0


def services_env(*flags: str) -> dict[str, str]:
    """The export lines of `platform/services [--cluster] env`."""
    out = subprocess.run(
        [str(REPO / "platform" / "services"), *flags, "env"], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"^export (\w+)=(.*)$", out, flags=re.M))


@contextlib.contextmanager
def private_redis():
    """A redis-server of our own for the single-node rows, on a free port; stopped afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="benchrc-") as folder:
        proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "yes",
             "--dir", folder, "--logfile", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while (
                subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True).stdout.strip()
                != "PONG"
            ):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the private redis-server did not start")
                time.sleep(0.1)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def client_for(url: str):
    from notifications.delivery.redis_client import make_redis_client

    return make_redis_client(url, socket_timeout=2.0, socket_connect_timeout=1.0)


def master_ports(url: str) -> list[int]:
    """The ports of the masters (one server: its own)."""
    from notifications.redis_connect import is_cluster

    client = client_for(url)
    if is_cluster(client):
        return sorted(node.port for node in client.get_primaries())
    return redis_ports(url)


def require_loopback(url: str) -> None:
    from notifications.redis_connect import is_cluster_url, parse_cluster_url

    if is_cluster_url(url):
        hosts = {node.host for node in parse_cluster_url(url)[0]}
    else:
        hosts = {re.sub(r"^\w+://(?:[^@]*@)?", "", url).split("/")[0].rsplit(":", 1)[0]}
    if hosts - {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"refusing to run: Redis not on 127.0.0.1: {sorted(hosts)}")


# --- one client process ----------------------------------------------------------------------------------
def client_loop(op: str, url: str, prefix: str, args, worker: int, go, stop, results) -> None:
    from notifications.delivery.circuit_breaker import CircuitBreaker
    from notifications.delivery.dedup import DedupStore
    from notifications.delivery.token_bucket import TokenBucket

    client = client_for(url)
    done, failed = 0, 0
    if op == "dedup":
        store = DedupStore(client, prefix, breaker=CircuitBreaker("bench", failure_threshold=10**9))
        store.claim_many(["warm-up"])
        store.confirm_many(["warm-up"])
    else:
        bucket = TokenBucket(client, prefix, breaker=CircuitBreaker("bench", failure_threshold=10**9))
        bucket.book("warm-up", BOOK_RATE, 1000, 1)
    go.wait()
    t0 = time.process_time()
    n = 0
    while not stop.is_set():
        if op == "dedup":
            keys = [f"{worker}-{n}-{i}:{i}:email" for i in range(args.batch)]
            claims = store.claim_many(keys)
            failed += sum(1 for r in claims.values() if r.fail_open)
            store.confirm_many(keys)
            done += len(keys)
        else:
            booking = bucket.book(f"provider-{n % args.buckets}", BOOK_RATE, 1000, BOOK_SLOTS, horizon=1.0)
            failed += 0 if booking.booked_at is not None else 1
            done += 1
        n += 1
    results.put((done, failed, time.process_time() - t0))


def measure(op: str, url: str, prefix: str, clients: int, args) -> dict:
    ctx = mp.get_context("fork")
    go, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=client_loop, args=(op, url, prefix, args, w, go, stop, results), daemon=True)
        for w in range(clients)
    ]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # clients connected and warmed up
    pids = redis_server_pids(redis_ports(url))
    masters = set(redis_server_pids(master_ports(url)))
    before = cpu_ticks(pids)
    started = time.perf_counter()
    go.set()
    time.sleep(args.seconds)
    stop.set()
    outcomes = [results.get(timeout=60) for _ in procs]
    wall = time.perf_counter() - started
    after = cpu_ticks(pids)
    for proc in procs:
        proc.join(10)
    tick = os.sysconf("SC_CLK_TCK")
    server_cpu = sum(after[p] - before.get(p, 0) for p in after) / tick
    master_cpu = sum(after[p] - before.get(p, 0) for p in after if p in masters) / tick / max(1, len(masters))
    ops = sum(o[0] for o in outcomes)
    return {
        "ops": ops,
        "rate": ops / wall,
        "failed": sum(o[1] for o in outcomes),
        "server_us": server_cpu / ops * 1e6 if ops else float("nan"),
        "master_us": master_cpu / ops * 1e6 if ops else float("nan"),
        "client_us": sum(o[2] for o in outcomes) / ops * 1e6 if ops else float("nan"),
        "servers": len(pids),
    }


# --- memory per million dedup keys --------------------------------------------------------------------
def memory_per_million(url: str, prefix: str, n: int, *, cluster: bool) -> dict:
    from notifications.delivery.dedup import DEFAULT_SENT_TTL_MS, SENT_MARKER, DedupStore
    from notifications.redis_connect import is_cluster

    client = client_for(url)
    store = DedupStore(client, prefix)

    def used() -> int:
        if is_cluster(client):
            per_master = client.info("memory", target_nodes=client.PRIMARIES).values()
            return sum(int(info["used_memory"]) for info in per_master)
        return int(client.info("memory")["used_memory"])

    out: dict = {}
    if cluster:
        before = used()
    sample, every = [], max(1, n // 1000)
    for start in range(0, n, 2000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 2000, n)):
            key = store.key(f"{uuid.UUID(int=i)}:{1_000_000 + i}:email")
            if i % every == 0:
                sample.append(key)
            pipe.set(key, SENT_MARKER, px=DEFAULT_SENT_TTL_MS)
        pipe.execute()
    if cluster:
        out["used_per_million"] = (used() - before) / n * 1_000_000
    usages = [int(client.memory_usage(k)) for k in sample]
    out["memory_usage_mean"] = sum(usages) / len(usages)
    out["key_length"] = sum(len(k) for k in sample) / len(sample)
    return out


# --- end to end through rate_limit_accuracy.py ----------------------------------------------------------
def e2e_throughput(url: str, messages: int) -> tuple[str, str]:
    command = [
        sys.executable, str(REPO / "benchmarks" / "rate_limit_accuracy.py"), "--skip-accuracy",
        "--throughput-rows", "0:200", "--throughput-messages", str(messages),
    ]  # fmt: skip
    log(f"end to end with REDIS_URL={url}: {shlex.join(command)}")
    result = subprocess.run(command, env={**os.environ, "REDIS_URL": url}, capture_output=True, text=True)
    if result.returncode != 0:
        return "failed", result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "?"
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("latency"))
    return lines[header], lines[header + 2]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--single", default=None, help="one Redis node (default: a private redis-server started here)")
    p.add_argument("--cluster", default=None, help="the cluster (default: `platform/services --cluster env`'s)")
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time per row")
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    p.add_argument("--batch", type=int, default=200, help="keys per claim/confirm pipeline (a polled batch)")
    p.add_argument("--buckets", type=int, default=4, help="provider buckets the bookings rotate over")
    p.add_argument("--memory-keys", type=int, default=1_000_000, help="sent markers for the memory figure (0: skip)")
    p.add_argument("--e2e-messages", type=int, default=0, help="end-to-end worker run per topology (0: skip)")
    return p.parse_args()


def command_line(args: argparse.Namespace) -> str:
    parts = ["benchmarks/redis_cluster.py", "--seconds", f"{args.seconds:g}", "--clients",
             ",".join(map(str, args.clients)), "--batch", str(args.batch), "--buckets", str(args.buckets),
             "--memory-keys", str(args.memory_keys), "--e2e-messages", str(args.e2e_messages)]  # fmt: skip
    for option in ("single", "cluster"):
        if getattr(args, option):
            parts += [f"--{option}", getattr(args, option)]
    return shlex.join(parts)


def main() -> int:
    args = parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    with contextlib.ExitStack() as stack:
        single = args.single or stack.enter_context(private_redis())
        return run(args, {"single": single, "cluster": args.cluster or services_env("--cluster")["REDIS_URL"]})


def run(args: argparse.Namespace, urls: dict[str, str]) -> int:
    for url in urls.values():
        require_loopback(url)
    run = uuid.uuid4().hex[:8]
    prefix = f"benchrc{run}:"
    rows, memory = [], {}
    try:
        for op in ("dedup", "booking"):
            for clients in args.clients:
                for name, url in urls.items():
                    log(f"{op}, {clients} client process(es), {name} ({url})")
                    figures = measure(op, url, prefix, clients, args)
                    rows.append({"op": op, "clients": clients, "topology": name, **figures})
        if args.memory_keys:
            for name, url in urls.items():
                log(f"memory: {args.memory_keys:,} sent markers on the {name}")
                memory[name] = memory_per_million(url, prefix, args.memory_keys, cluster=name == "cluster")
                delete_redis_prefix(client_for(url), f"{prefix}*")
        e2e = {name: e2e_throughput(url, args.e2e_messages) for name, url in urls.items()} if args.e2e_messages else {}
    finally:
        for url in urls.values():
            delete_redis_prefix(client_for(url), f"{prefix}*")

    print(f"Redis: single node {urls['single']}; cluster {urls['cluster']}")
    head = (
        f"{'operation':<34} {'clients':>7} {'topology':<8} {'ops/s':>9} {'server µs/op':>12} "
        f"{'per master':>10} {'client µs/op':>12} {'fail':>5}"
    )
    print(head)
    print("-" * len(head))
    what = {
        "dedup": f"dedup claim+confirm ({args.batch}/pipeline)",
        "booking": f"slot booking ({args.buckets} buckets)",
    }
    for r in rows:
        print(
            f"{what[r['op']]:<34} {r['clients']:>7} {r['topology']:<8} {r['rate']:>9,.0f} {r['server_us']:>12.1f} "
            f"{r['master_us']:>10.1f} {r['client_us']:>12.1f} {r['failed']:>5}"
        )
    print(
        "  ops/s: messages claimed and confirmed, or booking script calls, per second over all client processes;\n"
        "  server µs/op: CPU of every redis-server of the topology (cluster: 3 masters + 3 replicas) per operation;\n"
        "  per master: the masters' CPU per operation, divided by the number of masters (what one master carries);\n"
        "  client µs/op: CPU of the Python client processes per operation; fail: fail-open claims / failed bookings"
    )
    for name, m in memory.items():
        line = f"memory, {name}: MEMORY USAGE {m['memory_usage_mean']:.0f} B per sent marker"
        line += f" (key {m['key_length']:.0f} chars)"
        if "used_per_million" in m:
            line += f"; used_memory {m['used_per_million'] / 2**20:,.0f} MiB per million markers over the masters"
            line += " (replicas hold as much again)"
        print(line)
    for name, (header, row) in e2e.items():
        print(f"end to end, one sms worker, REDIS_URL on the {name}:\n  {header}\n  {row}")
    print()
    print(f"command: {command_line(args)}")
    print(f"code: {code_version()}")
    print(f"measured {datetime.now(UTC):%Y-%m-%d %H:%M UTC} on 127.0.0.1, {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
