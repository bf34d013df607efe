"""The spike's digest producer in a process of its own, as the cron job that sends a digest is another
service than the one that sends one-time codes: its CPU work (building and sending the batches) must
not hold up the OTP stream in the benchmark's process.

Reads its job as JSON on stdin (`url`, `headers`, `users`, `event_id_prefix`, `type`, `data`, `batch`,
`clients`), POSTs one event per user in batches from `clients` threads, retrying a failed request with
the same event ids, and writes `{"started", "finished", "statuses", "failed_events"}` as JSON on stdout.
SIGTERM stops it after the requests in flight."""

import queue
import signal
import sys
import threading
import time
from collections import Counter

import httpx
import orjson


def main() -> int:
    job = orjson.loads(sys.stdin.buffer.read())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    batches: queue.Queue[list[int]] = queue.Queue()
    users = job["users"]
    for i in range(0, len(users), job["batch"]):
        batches.put(users[i : i + job["batch"]])
    statuses: Counter[str] = Counter()
    failed = [0]

    def client() -> None:
        with httpx.Client(timeout=60.0) as http:
            while not stop.is_set():
                try:
                    chunk = batches.get_nowait()
                except queue.Empty:
                    return
                body = orjson.dumps({"events": [
                    {"event_id": f"{job['event_id_prefix']}{uid}", "type": job["type"], "recipients": [str(uid)],
                     "data": job["data"]} for uid in chunk
                ]})  # fmt: skip
                for attempt in range(5):
                    try:
                        status = str(http.post(job["url"], content=body, headers=job["headers"]).status_code)
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    statuses[status] += 1
                    if status == "202":
                        break
                    time.sleep(0.5 * (attempt + 1))
                else:
                    failed[0] += len(chunk)

    started = time.time()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(job["clients"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = {"started": started, "finished": time.time(), "statuses": statuses, "failed_events": failed[0]}
    sys.stdout.buffer.write(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
