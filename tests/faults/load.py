"""Steady load through `POST /api/v1/events` and the oracle: what was accepted against what the sandboxes got."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from notifications.outbox.envelope import platform_event_id

SERVICE = "faults"
#: kind -> (notification type, recipients per event): urgent one-time codes, transactional updates, bulk digests.
KINDS = {"otp": ("faults.otp", 1), "order": ("faults.order", 1), "digest": ("faults.digest", 3)}
#: How long a producer retries one event (503 while PostgreSQL is away, connection refused, timeouts)
#: before it gives up on it; a given-up event was never accepted and is not expected anywhere.
GIVE_UP_AFTER = 90.0


@dataclass
class Expected:
    case: str
    kind: str  # otp | order | digest | campaign
    t_ref: float  # wall clock the accepting request was sent (the delay of an urgent message counts from it)


@dataclass
class Ledger:
    """Every (event, recipient, channel) key the API accepted, by case; and the keys the sandboxes saw."""

    expected: dict[str, Expected] = field(default_factory=dict)
    seen: Counter = field(default_factory=Counter)
    first_seen: dict[str, float] = field(default_factory=dict)
    arrivals: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # key -> (t_wall, provider)
    given_up: Counter = field(default_factory=Counter)  # case -> events never accepted
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accept(self, key: str, case: str, kind: str, t_ref: float) -> None:
        with self.lock:
            self.expected[key] = Expected(case, kind, t_ref)

    def arrived(self, key: str, t_wall: float, provider: str) -> None:
        with self.lock:
            self.seen[key] += 1
            self.first_seen.setdefault(key, t_wall)
            self.arrivals.setdefault(key, []).append((t_wall, provider))

    def case_keys(self, case: str) -> list[str]:
        with self.lock:
            return [key for key, e in self.expected.items() if e.case == case]

    def missing(self, case: str) -> int:
        with self.lock:
            return sum(1 for key, e in self.expected.items() if e.case == case and key not in self.seen)

    def figures(self, case: str) -> Figures:
        with self.lock:
            keys = [key for key, e in self.expected.items() if e.case == case]
            delays = [self.first_seen[k] - self.expected[k].t_ref for k in keys
                      if self.expected[k].kind == "otp" and k in self.first_seen]  # fmt: skip
            return Figures(
                case=case,
                accepted=len(keys),
                delivered=sum(1 for k in keys if k in self.seen),
                lost=sum(1 for k in keys if k not in self.seen),
                duplicated=sum(self.seen[k] - 1 for k in keys if self.seen[k] > 1),
                max_urgent_delay=max(delays, default=float("nan")),
                urgent=len(delays),
                given_up=self.given_up[case],
                lost_kinds=Counter(self.expected[k].kind for k in keys if k not in self.seen),
                lost_sample=[k for k in keys if k not in self.seen][:3],
                duplicate_sample={k: self.arrivals[k] for k in keys if self.seen[k] > 1},
            )

    def unexpected(self) -> int:
        """Sends of keys nobody accepted (a poison message that got through, a stray)."""
        with self.lock:
            return sum(count for key, count in self.seen.items() if key not in self.expected)


@dataclass
class Figures:
    case: str
    accepted: int
    delivered: int
    lost: int
    duplicated: int
    max_urgent_delay: float
    urgent: int
    given_up: int
    lost_kinds: Counter = field(default_factory=Counter)
    lost_sample: list[str] = field(default_factory=list)
    duplicate_sample: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    fail_open: float = 0.0
    outage: float | None = None  # s the service was away, for the restart cases

    def line(self) -> str:
        return (
            f"FAULTS case={self.case} accepted={self.accepted} delivered={self.delivered} lost={self.lost} "
            f"duplicated={self.duplicated} max_urgent_delay={self.max_urgent_delay:.2f}s urgent={self.urgent} "
            f"given_up={self.given_up} dedup_fail_open={self.fail_open:g}"
            + (f" outage={self.outage:.1f}s" if self.outage is not None else "")
            + (f" lost_kinds={dict(self.lost_kinds)} e.g. {self.lost_sample}" if self.lost else "")
            + (f" duplicates: {dict(list(self.duplicate_sample.items())[:3])}" if self.duplicated else "")
        )


class Collector(threading.Thread):
    """Reads every accepted request of the e-mail sandboxes (SendGrid, SMTP) as they come, into the ledger."""

    def __init__(self, clients: dict, ledger: Ledger, interval: float = 0.3) -> None:
        super().__init__(name="faults-collector", daemon=True)
        self.clients, self.ledger, self.interval = clients, ledger, interval
        self.since = dict.fromkeys(clients, 0)
        self.stop_event = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # the sandbox died: the cases see it through `error`
                self.error = exc
                return

    def poll(self) -> None:
        for name, client in self.clients.items():
            while True:
                page = client.requests_page(since=self.since[name], limit=5000)
                for r in page["requests"]:
                    self.ledger.arrived(r["idempotency_key"] or f"no-key:{name}:{r['seq']}", r["t_wall"], name)
                self.since[name] = page["next_since"]
                if page["count"] < 5000:
                    break


class Producers:
    """`n` producer threads posting a mix of urgent, transactional and bulk events at `rate` events/s in
    all, one event per request, each retried with the same event id until the API accepts it."""

    def __init__(self, base_url: str, raw_key: str, users: list[int], ledger: Ledger, case: str,
                 *, rate: float, n: int = 3, seed: int = 1) -> None:  # fmt: skip
        self.url = base_url + "/api/v1/events"
        self.headers = {"Authorization": f"Api-Key {raw_key}"}
        self.users, self.ledger, self.case, self.rate = users, ledger, case, rate
        self.stop_event = threading.Event()
        self.statuses: Counter = Counter()
        self.threads = [
            threading.Thread(target=self._produce, args=(i, random.Random(seed * 100 + i)), daemon=True)
            for i in range(n)
        ]

    def __enter__(self) -> Producers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(GIVE_UP_AFTER + 30)

    def _produce(self, index: int, rng: random.Random) -> None:
        interval = len(self.threads) / self.rate
        with httpx.Client(timeout=10.0) as client:
            start, i = time.monotonic(), 0
            while not self.stop_event.is_set():
                kind = ("otp", "order", "digest")[i % 3]
                self._post(client, rng, kind, f"{self.case}-{index}-{i}")
                i += 1
                delay = start + i * interval - time.monotonic()
                if delay > 0:
                    self.stop_event.wait(delay)

    def _post(self, client: httpx.Client, rng: random.Random, kind: str, event_id: str) -> None:
        type_key, n = KINDS[kind]
        recipients = rng.sample(self.users, n)
        body = {"event_id": event_id, "type": type_key, "recipients": [str(u) for u in recipients],
                "data": {"code": f"{rng.randrange(10**6):06d}", "headline": "news"}}  # fmt: skip
        first = time.time()
        deadline = time.monotonic() + GIVE_UP_AFTER
        wait = 0.2
        while time.monotonic() < deadline:
            sent = time.time()
            try:
                response = client.post(self.url, json=body, headers=self.headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                status, response = type(exc).__name__, None
            self.statuses[status] += 1
            if status == 202:
                # A repeat answered `duplicate` was accepted by an earlier attempt whose answer was lost.
                t_ref = first if response.json().get("duplicate") else sent
                event = platform_event_id(service=SERVICE, producer_event_id=event_id)
                for uid in recipients:
                    self.ledger.accept(f"{event}:{uid}:email", self.case, kind, t_ref)
                return
            assert status not in (500, 400, 401, 403), f"the API answered {status}: {response and response.text}"
            time.sleep(wait * random.uniform(0.5, 1.0))
            wait = min(wait * 2, 2.0)
        self.ledger.given_up[self.case] += 1
