"""The channel worker: dedup claim → token → send → confirm, with retries, failover and a DLQ.

One `ChannelWorker` serves one channel. It runs under either runner:

* `handle_batch` (the shared `ConsumerRunner`): a polled batch from `notif.<channel>` and its retry
  tiers; it returns only when every message of the batch has a durable outcome;
* `prepare` + `submit` (`notifications.delivery.pipeline.PipelinedWorkerRunner`, what `run_worker`
  uses): the event loop runs in its own thread and each job reports itself done on its own, so the
  next batch is polled and claimed while the sends of the previous one are still in flight.

A job is done when it has a durable outcome:

* sent and confirmed in the dedup store (or already sent: skipped);
* parked in a retry tier with `not-before`, `attempt` and the error history in headers;
* produced to `notif.<channel>.dlq` (permanent error, dead contact point, attempts or age spent);
* held back: a retry-tier message that is not yet due is returned to the runner as a deferral,
  which pauses that partition until the head message is due.

Sends run concurrently (asyncio, bounded by `concurrency`) so one slow provider call never blocks
the others. Claims are one pipeline per batch; confirms of every send that completed in the same
event-loop iteration are one pipeline (`_flush_confirms`), never a blocking round trip per send.
"""

import asyncio
import logging
import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter, Histogram

from notifications.bus.runner import Deferrals
from notifications.bus.topics import RETRY_TIERS, channel_topic, delivery_topic
from notifications.delivery.backoff import RetryAction, RetryPolicy
from notifications.delivery.circuit_breaker import CircuitBreaker
from notifications.delivery.dedup import ClaimStatus, DedupStore
from notifications.delivery.dispenser import TokenDispenser
from notifications.delivery.token_bucket import RateLimiterUnavailable, TokenBucket
from notifications.delivery_log import LogEntry
from notifications.dispatch.messages import ChannelMessage, Header, headers_dict
from notifications.priority import lane_for, message_priority
from notifications.providers.base import ProviderAdapter
from notifications.providers.results import SendOutcome, SendResult

log = logging.getLogger(__name__)

SENDS = Counter("worker_sends_total", "Provider calls by outcome", ["channel", "provider", "outcome"])
SKIPPED = Counter("worker_dedup_skipped_total", "Messages not sent because dedup says already sent", ["channel"])
RETRIES = Counter("worker_retries_total", "Messages parked in a retry tier", ["channel", "tier"])
DLQ = Counter("worker_dlq_total", "Messages sent to the DLQ", ["channel", "error_class"])
TOKEN_WAIT = Histogram(
    "worker_token_wait_seconds",
    "Time spent waiting for rate-limit tokens",
    ["provider"],
    buckets=(0, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10),
)


@dataclass
class ProviderSlot:
    """A provider of this channel as the worker uses it: adapter, contract and circuit breaker."""

    name: str
    kind: str
    rate: float
    burst: int
    reserve: int
    breaker: CircuitBreaker
    enabled: bool = True
    adapter_factory: Callable[[str], ProviderAdapter] | None = None
    _adapter: ProviderAdapter | None = None
    _in_flight: "InFlightLimit | None" = None

    @property
    def adapter(self) -> ProviderAdapter:
        """Built on first use inside the worker's event loop (adapters own loop-bound HTTP pools)."""
        if self._adapter is None:
            assert self.adapter_factory is not None
            self._adapter = self.adapter_factory(self.kind)
        return self._adapter

    @property
    def in_flight(self) -> "InFlightLimit | None":
        """The adapter's `max_in_flight` as a limit on this worker's sends (None: unbounded)."""
        if self._in_flight is None and self.adapter.max_in_flight:
            self._in_flight = InFlightLimit(self.adapter.max_in_flight)
        return self._in_flight


class InFlightLimit:
    """At most `limit` provider requests in flight (a push to k devices takes k), first come first served.

    Sends beyond what a provider connection carries at once wait here, before their send starts:
    not under the adapter's send deadline (a deadline that expires on a request the provider already
    accepted makes the retry a duplicate), not holding a worker concurrency slot (a slow provider
    cannot take the slots of the others) and not holding a rate-limit token.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, requests: int) -> int:
        """Wait until `requests` (at most `limit`) fit; returns what to `release`."""
        n = max(1, min(requests, self.limit))
        if not self._waiters and self.used + n <= self.limit:
            self.used += n
            return n
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(n)  # granted, then cancelled before it resumed: give it back
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return n

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            n, waiter = self._waiters.popleft()
            self.used += n
            waiter.set_result(None)


@dataclass(eq=False)  # identity: jobs live in sets while they are being delivered
class Job:
    message: Message
    body: ChannelMessage
    headers: dict[str, str]
    attempt: int  # attempts already made
    first_attempt_at: float
    errors: list[dict[str, Any]] = field(default_factory=list)
    claimed: bool = False
    #: What settling this job writes (delivery log, campaign progress, dead contact points); filled
    #: in the event loop, read by the thread that settles and commits once the job is done.
    entries: list[LogEntry] = field(default_factory=list)
    #: (message id, status, meta) of a campaign message's outcomes.
    campaign: list[tuple[str, str, dict]] = field(default_factory=list)
    invalid: list[tuple[ChannelMessage, SendResult]] = field(default_factory=list)
    #: Set when a stopping worker gave the job up before sending (claim released, offset not committed).
    abandoned: bool = False
    #: True while the provider call is under way (a job is only ever given up outside that).
    sending: bool = False
    task: asyncio.Task | None = None

    @property
    def partition(self) -> tuple[str, int]:
        return (self.message.topic(), self.message.partition())

    @property
    def key(self) -> str:
        return self.body["id"]


@dataclass
class WorkerConfig:
    channel: str
    concurrency: int = 200
    #: The in-process retry budget; the dedup lease must outlast timeout x (1 + in-process retries).
    max_in_process_retries: int = 2
    tiers: tuple[tuple[str, float], ...] = RETRY_TIERS
    #: Provider slots are (1 + margin) / R apart, and a send later than margin / 2 seconds after its
    #: slot books again, so a provider enforcing exactly R per second sees no 1 s window above R.
    rate_window_margin: float | None = 0.02


class ChannelWorker:
    def __init__(
        self,
        *,
        config: WorkerConfig,
        providers: Callable[[], list[ProviderSlot]],
        refresh_providers: Callable[[], None] = lambda: None,
        dedup: DedupStore,
        bucket: TokenBucket,
        policy: RetryPolicy,
        producer: Producer,
        on_outcomes: Callable[[list[LogEntry]], None],
        on_invalid_contact: Callable[[ChannelMessage, SendResult], None],
        on_campaign_outcomes: Callable[[list[tuple[str, str, dict]]], Any] | None = None,
        sent_tally: Callable[[ChannelMessage], tuple[str, str] | None] = lambda _message: None,
        wall_clock: Callable[[], float] = time.time,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.channel = config.channel
        self.providers = providers
        self.refresh_providers = refresh_providers
        self.dedup = dedup
        self.bucket = bucket
        self.policy = policy
        self.producer = producer
        self.on_outcomes = on_outcomes
        self.on_invalid_contact = on_invalid_contact
        self.on_campaign_outcomes = on_campaign_outcomes
        self.sent_tally = sent_tally
        self.now = wall_clock
        self.loop = loop or asyncio.new_event_loop()
        self._errors: list[KafkaError] = []
        self._sem: asyncio.Semaphore | None = None
        self._dispensers: dict[str, TokenDispenser] = {}
        #: Jobs with an outcome, in completion order (put by the event loop, taken by the settler).
        self.done: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._confirm_queue: list[Job] = []
        self._confirm_scheduled = False
        self._stopping = False
        self._revoked: set[tuple[str, int]] = set()
        self._active: set[Job] = set()

    # -- batch -------------------------------------------------------------------------------
    def handle_batch(self, messages: list[Message]) -> Deferrals:
        """Handle one batch to the end (sends, confirms, retry/DLQ produces, delivery log)."""
        jobs, deferrals, _raw = self.prepare(messages)
        if jobs:
            self.refresh_providers()  # database reads happen here, outside the event loop
            self.loop.run_until_complete(self._process(jobs))
            self._flush_confirms()
        done = []
        while not self.done.empty():
            done.append(self.done.get_nowait())
        self.settle(done)
        return deferrals

    def prepare(self, messages: list[Message]) -> tuple[list[Job], Deferrals, list[Message]]:
        """Parse a polled batch into jobs.

        Returns the jobs, the deferrals (retry-tier partitions whose head message is not due: that
        message and every later one of its partition are left out) and the messages that were not
        jobs but already have their outcome (unparseable: produced to the DLQ, durable once the
        producer is flushed)."""
        deferrals: Deferrals = {}
        jobs: list[Job] = []
        raw: list[Message] = []
        now = self.now()
        for message in messages:
            tp = (message.topic(), message.partition())
            if tp in deferrals:
                continue  # a message before it in this partition is not due: keep order, hold back
            headers = headers_dict(message.headers())
            not_before = float(headers.get(Header.NOT_BEFORE) or 0)
            if not_before > now:
                deferrals[tp] = (message.offset(), time.monotonic() + (not_before - now))
                continue
            try:
                body = orjson.loads(message.value() or b"")
                if not isinstance(body, dict) or body.get("v") != 1 or not body.get("id"):
                    raise ValueError("not a v1 channel message")
            except (orjson.JSONDecodeError, ValueError) as exc:
                self._dead_letter_raw(message, headers, "invalid_message", str(exc))
                raw.append(message)
                continue
            jobs.append(
                Job(
                    message=message,
                    body=body,
                    headers=headers,
                    attempt=int(headers.get(Header.ATTEMPT) or 0),
                    first_attempt_at=float(headers.get(Header.FIRST_ATTEMPT_AT) or now),
                    errors=orjson.loads(headers[Header.ERRORS]) if headers.get(Header.ERRORS) else [],
                )
            )
        return jobs, deferrals, raw

    def submit(self, jobs: list[Job]) -> "asyncio.Future[None]":
        """Start `jobs` on the worker's event loop, which runs in another thread (pipelined mode);
        each job is put on `done` when it has its outcome."""
        return asyncio.run_coroutine_threadsafe(self._process(jobs), self.loop)

    def settle(self, jobs: list[Job]) -> None:
        """Make the outcomes of finished jobs durable, outside the event loop: wait for every retry
        and DLQ produce to be acknowledged, then write the delivery log, campaign progress and dead
        contact points. Only after this may the jobs' offsets be committed."""
        self._flush()
        entries: list[LogEntry] = []
        campaign: list[tuple[str, str, dict]] = []
        for job in jobs:
            for body, result in job.invalid:
                self.on_invalid_contact(body, result)
            entries += job.entries
            campaign += job.campaign
        if entries:
            self.on_outcomes(entries)
        if campaign and self.on_campaign_outcomes is not None:
            self.on_campaign_outcomes(campaign)

    def stop_sending(self) -> None:
        """Graceful stop (call in the event loop): sends in progress finish; jobs still waiting for a
        concurrency slot or a token give their claim up and are not committed (redelivered later)."""
        self._stopping = True
        self._give_up_waiting(lambda job: True)
        for dispenser in self._dispensers.values():
            if dispenser.forfeited:
                log.info("%s: %d send slot(s) given up for starting too late", dispenser.name, dispenser.forfeited)

    def revoke(self, partitions: set[tuple[str, int]]) -> None:
        """Partitions taken away by a rebalance (call in the event loop): their jobs still waiting
        for a slot or a token are given up at once, so the revocation (and with it the rebalance
        of every worker) waits only for the sends already under way."""
        self._revoked |= partitions
        self._give_up_waiting(lambda job: job.partition in partitions)

    def reinstate(self, partitions: set[tuple[str, int]]) -> None:
        """Partitions assigned (again) to this worker (call in the event loop)."""
        self._revoked -= partitions

    def _give_up_waiting(self, which: Callable[[Job], bool]) -> None:
        for job in list(self._active):
            if not job.sending and job.task is not None and which(job):
                job.task.cancel()

    async def _process(self, jobs: list[Job]) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.config.concurrency)
        await self._process_jobs(jobs)

    async def _process_jobs(self, jobs: list[Job]) -> None:
        jobs = self._apply_campaign_halts(jobs)
        claims = self.dedup.claim_many([j.key for j in jobs])
        to_send: list[Job] = []
        seen: set[str] = set()
        for job in jobs:
            if job.key in seen:  # the same message twice in one batch: one claim covers both
                SKIPPED.labels(self.channel).inc()
                self._note_deduplicated(job)
                self._completed(job)
                continue
            seen.add(job.key)
            claim = claims[job.key]
            if claim.status == ClaimStatus.ALREADY_SENT:
                SKIPPED.labels(self.channel).inc()
                self._note_deduplicated(job)
                self._completed(job)
                continue
            if claim.status == ClaimStatus.IN_FLIGHT:
                # Another worker holds the lease (or crashed holding it): look again after the lease
                # could have expired, without counting an attempt.
                self._park(job, delay=self.config.tiers[0][1], error=None)
                self._completed(job)
                continue
            job.claimed = True
            to_send.append(job)
        if not to_send:
            return
        if self.channel == "inapp":
            await self._send_inapp(to_send)
            return
        tasks = []
        for job in to_send:
            job.task = asyncio.ensure_future(self._deliver_and_report(job))
            tasks.append(job.task)
        await asyncio.gather(*tasks)

    async def _deliver_and_report(self, job: Job) -> None:
        self._active.add(job)
        try:
            if self._stopping or job.partition in self._revoked:
                raise asyncio.CancelledError
            confirming = await self._deliver(job)
        except asyncio.CancelledError:
            if job.sending:  # never given up mid-call (see _give_up_waiting): a real cancellation
                raise
            self._abandon(job)
            confirming = False
        finally:
            self._active.discard(job)
        if not confirming:  # a sent job is reported once its confirm is flushed
            self._completed(job)

    def _completed(self, job: Job) -> None:
        self.done.put(job)

    def _queue_confirm(self, job: Job) -> None:
        """Confirm a sent job together with every other send completed in this loop iteration."""
        self._confirm_queue.append(job)
        if not self._confirm_scheduled:
            self._confirm_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_confirms)

    def _flush_confirms(self) -> None:
        self._confirm_scheduled = False
        jobs, self._confirm_queue = self._confirm_queue, []
        if not jobs:
            return
        self._confirm(jobs)
        for job in jobs:
            self._completed(job)

    def _confirm(self, jobs: list[Job]) -> None:
        """Mark the jobs' sends in the dedup store (never raises: Redis errors are logged), counting
        each campaign message's send in the same script (`sent_tally`)."""
        tallies = {job.key: tally for job in jobs if (tally := self.sent_tally(job.body)) is not None}
        self.dedup.confirm_many([job.key for job in jobs], tallies=tallies)

    async def _deliver(self, job: Job) -> bool:
        """Send one job: pick a provider, take a token, send, and settle the outcome. Returns True
        when the job was sent and its confirm is queued (it is reported done by the confirm flush)."""
        for in_process_retry in range(self.config.max_in_process_retries + 1):
            slot = self._pick_provider(job.body.get("to", {}).get("platform"))
            if slot is None:
                self._release_and_park(
                    job,
                    delay=None,
                    error={"error_class": "no_provider", "message": "every provider is open or disabled"},
                )
                return False
            # First a place among the provider's requests in flight, then a concurrency slot, then
            # the token right before the call, so the gap between grant and arrival at the provider
            # stays small (rate accuracy) and the send deadline never covers a wait for a connection.
            limit = slot.in_flight
            admitted = await limit.acquire(slot.adapter.requests_for(job.body)) if limit is not None else 0
            try:
                async with self._sem:  # type: ignore[union-attr]
                    try:
                        await self._take_campaign_token(job)
                        await self._take_token(slot, job)
                    except RateLimiterUnavailable:
                        self._release_and_park(job, delay=None, error={"error_class": "rate_limiter_unavailable"})
                        return False
                    job.sending = True
                    try:
                        result = await slot.adapter.send(job.body)
                    finally:
                        job.sending = False
            finally:
                if limit is not None:
                    limit.release(admitted)
            SENDS.labels(self.channel, slot.name, result.outcome).inc()
            job.attempt += 1
            if result.outcome == SendOutcome.SENT:
                slot.breaker.record_success()
                self._record(job, "sent", provider=slot.name, provider_message_id=result.provider_message_id)
                if result.invalid_tokens:
                    job.invalid.append((job.body, result))
                self._queue_confirm(job)
                return True
            job.errors.append(_error_entry(result, slot.name, self.now()))
            if result.outcome in (SendOutcome.PERMANENT, SendOutcome.INVALID_CONTACT):
                slot.breaker.record_success()  # the provider works; this message does not
                if result.outcome == SendOutcome.INVALID_CONTACT:
                    job.invalid.append((job.body, result))
                self._release_and_dead_letter(job, result.outcome.value, result.message, slot.name)
                return False
            if result.outcome == SendOutcome.RATE_LIMITED:
                # Not a failure of the provider: hold its bucket until the reset, and do not count
                # this try against the attempt budget.
                job.attempt -= 1
                if result.retry_after:
                    self.bucket.hold_for(slot.name, result.retry_after, rate=slot.rate, burst=slot.burst)
                    if (dispenser := self._dispensers.get(slot.name)) is not None:
                        dispenser.hold(result.retry_after)
            else:  # transient or configuration: the provider is unwell
                slot.breaker.record_failure()
            retry_after = result.retry_after
            if result.outcome == SendOutcome.RATE_LIMITED and retry_after:
                # Everyone throttled at the same moment got the same Retry-After: spread the retries
                # over [retry_after, 2 x retry_after] so they do not return as one burst.
                retry_after *= 1 + self.policy.rng.random()
            decision = self.policy.decide(
                max(job.attempt, 1), job.first_attempt_at, self.now(), retry_after=retry_after
            )
            if decision.action == RetryAction.GIVE_UP:
                self._release_and_dead_letter(job, decision.reason or "retries_exhausted", result.message, slot.name)
                return False
            if (
                decision.action == RetryAction.RETRY_IN_PROCESS
                and in_process_retry < self.config.max_in_process_retries
                and not self._stopping
                and job.partition not in self._revoked
            ):
                await asyncio.sleep(decision.delay)
                continue
            self._release_and_park(job, delay=decision.delay, error=None)
            return False
        self._release_and_park(job, delay=None, error=None)
        return False

    def _abandon(self, job: Job) -> None:
        """The worker stops before this job got a token: nothing was sent; give the claim up so the
        next owner of the partition sends it at once, and leave its offset uncommitted."""
        if job.claimed:
            self.dedup.release(job.key)
        job.abandoned = True
        job.entries.clear()
        job.campaign.clear()

    async def _send_inapp(self, jobs: list[Job]) -> None:
        """The inbox is written in bulk: one insert for the whole batch (idempotent per message)."""
        slot = self._pick_provider()
        if slot is None:
            for job in jobs:
                self._release_and_park(job, delay=None, error={"error_class": "no_provider"})
                self._completed(job)
            return
        results = await slot.adapter.send_many([j.body for j in jobs])  # type: ignore[attr-defined]
        confirmed = []
        for job, result in zip(jobs, results, strict=True):
            job.attempt += 1
            SENDS.labels(self.channel, slot.name, result.outcome).inc()
            if result.outcome == SendOutcome.SENT:
                confirmed.append(job)
                self._record(job, "sent", provider=slot.name)
            else:
                job.errors.append(_error_entry(result, slot.name, self.now()))
                if result.outcome in (SendOutcome.PERMANENT, SendOutcome.INVALID_CONTACT):
                    self._release_and_dead_letter(job, result.outcome.value, result.message, slot.name)
                else:
                    self._release_and_park(job, delay=None, error=None)
        if confirmed:
            self._confirm(confirmed)
        for job in jobs:
            self._completed(job)

    # -- providers and tokens ---------------------------------------------------------------------
    def _pick_provider(self, kind: str | None = None) -> ProviderSlot | None:
        """The first enabled provider whose circuit admits a request (failover in priority order).
        `kind` narrows the choice (a push message for APNs devices needs an APNs provider)."""
        for slot in self.providers():
            if kind and slot.kind != kind:
                continue
            if slot.enabled and slot.breaker.allow_request():
                return slot
        return None

    def _apply_campaign_halts(self, jobs: list[Job]) -> list[Job]:
        """Drop messages of cancelled campaigns; hold back those of paused ones (retry tier)."""
        campaign_ids = sorted(
            {str(j.body["meta"]["campaign_id"]) for j in jobs if (j.body.get("meta") or {}).get("campaign_id")}
        )
        if not campaign_ids:
            return jobs
        from campaigns.halt import read_halts

        halts = read_halts(self.dedup.client, campaign_ids)
        if not halts:
            return jobs
        kept = []
        for job in jobs:
            halt = halts.get(str((job.body.get("meta") or {}).get("campaign_id")))
            if halt == "cancelled":
                self._record(job, "suppressed", reason="campaign_cancelled")
                self._completed(job)
            elif halt == "paused":
                self._park(job, delay=self.config.tiers[0][1], error=None)
                self._completed(job)
            else:
                kept.append(job)
        return kept

    def _note_deduplicated(self, job: Job) -> None:
        meta = job.body.get("meta")
        if meta and meta.get("campaign_id"):
            job.campaign.append((job.key, "deduplicated", meta))

    async def _take_campaign_token(self, job: Job) -> None:
        """A campaign's own throttle (max sends/s), on top of the provider's contract."""
        meta = job.body.get("meta") or {}
        rate = meta.get("throttle")
        if not rate or not meta.get("campaign_id"):
            return
        from campaigns.throttle import throttle_bucket_name, throttle_burst

        name = throttle_bucket_name(meta["campaign_id"])
        dispenser = self._dispensers.get(name)
        if dispenser is None:
            burst = throttle_burst(float(rate))
            dispenser = TokenDispenser(
                bucket=self.bucket,
                name=name,
                contract=lambda r=float(rate), b=burst: (r, b, 0),
                booking=False,  # campaign_throttle_take takes from this bucket too
            )
            self._dispensers[name] = dispenser
        await dispenser.acquire("transactional")

    async def _take_token(self, slot: ProviderSlot, job: Job) -> None:
        dispenser = self._dispensers.get(slot.name)
        if dispenser is None:
            dispenser = TokenDispenser(
                bucket=self.bucket,
                name=slot.name,
                contract=lambda s=slot: (s.rate, s.burst, s.reserve),
                window_margin=self.config.rate_window_margin,
                # A send later than half the margin's share of a second after its slot books again:
                # the other half is left for the network and the provider's side.
                max_lateness=None if self.config.rate_window_margin is None else self.config.rate_window_margin / 2,
            )
            self._dispensers[slot.name] = dispenser
        started = time.monotonic()
        await dispenser.acquire(message_priority(job.body))
        TOKEN_WAIT.labels(slot.name).observe(time.monotonic() - started)

    # -- outcomes ---------------------------------------------------------------------------------
    def _release_and_park(self, job: Job, *, delay: float | None, error: dict | None) -> None:
        if job.claimed:
            self.dedup.release(job.key)
        if error:
            job.errors.append({**error, "at": self.now()})
        self._park(job, delay=delay if delay is not None else self.config.tiers[0][1], error=error)

    def _park(self, job: Job, *, delay: float, error: dict | None) -> None:
        tier, _seconds = next(((n, s) for n, s in self.config.tiers if s >= delay), self.config.tiers[-1])
        not_before = self.now() + max(delay, 0.0)
        headers = {
            Header.IDEMPOTENCY_KEY: job.key,
            Header.ATTEMPT: str(job.attempt),
            Header.FIRST_ATTEMPT_AT: f"{job.first_attempt_at:.3f}",
            Header.NOT_BEFORE: f"{not_before:.3f}",
            Header.ORIGIN_TOPIC: job.headers.get(Header.ORIGIN_TOPIC) or job.message.topic(),
            Header.ERRORS: orjson.dumps(job.errors[-20:]).decode(),
        }
        if job.headers.get(Header.REPLAY):
            headers[Header.REPLAY] = job.headers[Header.REPLAY]
        # The retry tier of the message's own lane: a bulk retry never waits in front of a transactional one.
        self._produce(delivery_topic(self.channel, lane_for(message_priority(job.body)), tier), job, headers)
        RETRIES.labels(self.channel, tier).inc()
        self._record(job, "retrying", reason=(job.errors[-1].get("error_class", "") if job.errors else "in_flight"))

    def _release_and_dead_letter(self, job: Job, error_class: str, message: str, provider: str) -> None:
        if job.claimed:
            self.dedup.release(job.key)  # a replay from the DLQ must be able to send it later
        headers = {
            Header.IDEMPOTENCY_KEY: job.key,
            Header.ATTEMPT: str(job.attempt),
            Header.FIRST_ATTEMPT_AT: f"{job.first_attempt_at:.3f}",
            Header.ORIGIN_TOPIC: job.headers.get(Header.ORIGIN_TOPIC) or job.message.topic(),
            Header.ERROR_CLASS: error_class,
            Header.ERROR: (message or "")[:1000],
            Header.ERRORS: orjson.dumps(job.errors[-50:]).decode(),
            Header.PROVIDER: provider,
        }
        if job.headers.get(Header.REPLAY):  # lets triage reopen the entry a replay came from
            headers[Header.REPLAY] = job.headers[Header.REPLAY]
        self._produce(channel_topic(self.channel, "dlq"), job, headers)
        DLQ.labels(self.channel, error_class).inc()
        self._record(job, "dlq", reason=f"{error_class}: {message}"[:200], provider=provider)

    def _dead_letter_raw(self, message: Message, headers: dict[str, str], error_class: str, error: str) -> None:
        out = {
            **headers,
            Header.ORIGIN_TOPIC: headers.get(Header.ORIGIN_TOPIC) or message.topic(),
            Header.ERROR_CLASS: error_class,
            Header.ERROR: error[:1000],
        }
        self._produce_raw(channel_topic(self.channel, "dlq"), message.key(), message.value() or b"", out)
        DLQ.labels(self.channel, error_class).inc()

    def _record(
        self, job: Job, status: str, *, reason: str = "", provider: str = "", provider_message_id: str = ""
    ) -> None:
        body = job.body
        if not body.get("event_id") or body.get("user_id") is None:
            return
        meta = body.get("meta")
        if meta and meta.get("campaign_id"):
            job.campaign.append((job.key, status, meta))
        job.entries.append(
            LogEntry(
                event_id=body["event_id"],
                user_id=int(body["user_id"]),
                channel=self.channel,
                type=body.get("type", ""),
                status=status,
                reason=reason,
                provider=provider,
                provider_message_id=provider_message_id or "",
                attempts=job.attempt,
            )
        )

    # -- producing -------------------------------------------------------------------------------
    def _produce(self, topic: str, job: Job, headers: dict[str, str]) -> None:
        self._produce_raw(topic, job.message.key(), job.message.value() or b"", headers)

    def _produce_raw(self, topic: str, key: bytes | None, value: bytes, headers: dict[str, str]) -> None:
        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                self._errors.append(err)

        while True:
            try:
                self.producer.produce(
                    topic, value=value, key=key, headers=list(headers.items()), on_delivery=on_delivery
                )
                return
            except BufferError:
                self.producer.poll(0.05)

    def _flush(self) -> None:
        remaining = self.producer.flush(60)
        errors, self._errors = self._errors, []
        if remaining or errors:
            raise RuntimeError(f"worker produce failed: {len(errors)} errors, {remaining} unacknowledged")


def _error_entry(result: SendResult, provider: str, now: float) -> dict[str, Any]:
    return {
        "at": round(now, 3),
        "provider": provider,
        "error_class": result.outcome.value,
        "status": result.status_code,
        "code": result.error_code,
        "message": (result.message or "")[:300],
    }
