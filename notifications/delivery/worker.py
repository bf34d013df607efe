"""The channel worker: dedup claim → token → send → confirm, with retries, failover and a DLQ.

One `ChannelWorker` serves one channel. The runner hands it a polled batch from `notif.<channel>`
and its retry tiers; it returns only when every message has a durable outcome:

* sent and confirmed in the dedup store (or already sent: skipped);
* parked in a retry tier with `not-before`, `attempt` and the error history in headers;
* produced to `notif.<channel>.dlq` (permanent error, dead contact point, attempts or age spent);
* held back: a retry-tier message that is not yet due is returned to the runner as a deferral,
  which pauses that partition until the head message is due.

Sends of a batch run concurrently (asyncio, bounded by `concurrency`) so one slow provider call
never blocks the others; every Redis step of a batch (claims, confirms, releases) is one pipeline.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import Counter, Histogram

from notifications.bus.runner import Deferrals
from notifications.bus.topics import RETRY_TIERS, channel_topic
from notifications.delivery.backoff import RetryAction, RetryPolicy
from notifications.delivery.circuit_breaker import CircuitBreaker
from notifications.delivery.dedup import ClaimStatus, DedupStore
from notifications.delivery.dispenser import TokenDispenser
from notifications.delivery.token_bucket import RateLimiterUnavailable, TokenBucket
from notifications.delivery_log import LogEntry
from notifications.dispatch.messages import ChannelMessage, Header, headers_dict
from notifications.providers.base import ProviderAdapter, SendOutcome, SendResult

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

    @property
    def adapter(self) -> ProviderAdapter:
        """Built on first use inside the worker's event loop (adapters own loop-bound HTTP pools)."""
        if self._adapter is None:
            assert self.adapter_factory is not None
            self._adapter = self.adapter_factory(self.kind)
        return self._adapter


@dataclass
class Job:
    message: Message
    body: ChannelMessage
    headers: dict[str, str]
    attempt: int  # attempts already made
    first_attempt_at: float
    errors: list[dict[str, Any]] = field(default_factory=list)
    claimed: bool = False

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
        on_campaign_outcomes: Callable[[list[LogEntry], list[dict | None]], Any] | None = None,
        wall_clock: Callable[[], float] = time.time,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.channel = config.channel
        self.providers = providers
        self.refresh_providers = refresh_providers
        self._invalid_contacts: list[tuple[ChannelMessage, SendResult]] = []
        self.dedup = dedup
        self.bucket = bucket
        self.policy = policy
        self.producer = producer
        self.on_outcomes = on_outcomes
        self.on_invalid_contact = on_invalid_contact
        self.on_campaign_outcomes = on_campaign_outcomes
        self.now = wall_clock
        self.loop = loop or asyncio.new_event_loop()
        self._errors: list[KafkaError] = []
        self._outcomes: list[LogEntry] = []
        self._sem: asyncio.Semaphore | None = None
        self._dispensers: dict[str, TokenDispenser] = {}
        self._metas: list[dict | None] = []
        self._deduplicated: list[tuple[LogEntry, dict | None]] = []

    # -- batch -------------------------------------------------------------------------------
    def handle_batch(self, messages: list[Message]) -> Deferrals:
        deferrals: Deferrals = {}
        jobs: list[Job] = []
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
        if jobs:
            self.refresh_providers()  # database reads happen here, outside the event loop
            self.loop.run_until_complete(self._process(jobs))
        self._flush()
        invalid, self._invalid_contacts = self._invalid_contacts, []
        for body, result in invalid:
            self.on_invalid_contact(body, result)
        outcomes, self._outcomes = self._outcomes, []
        metas, self._metas = self._metas, []
        if outcomes:
            self.on_outcomes(outcomes)
        deduplicated, self._deduplicated = self._deduplicated, []
        if self.on_campaign_outcomes is not None and any(metas + [m for _, m in deduplicated]):
            self.on_campaign_outcomes(outcomes + [e for e, _ in deduplicated], metas + [m for _, m in deduplicated])
        return deferrals

    async def _process(self, jobs: list[Job]) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.config.concurrency)
        jobs = self._apply_campaign_halts(jobs)
        claims = self.dedup.claim_many([j.key for j in jobs])
        to_send: list[Job] = []
        seen: set[str] = set()
        for job in jobs:
            if job.key in seen:  # the same message twice in one batch: one claim covers both
                SKIPPED.labels(self.channel).inc()
                self._note_deduplicated(job)
                continue
            seen.add(job.key)
            claim = claims[job.key]
            if claim.status == ClaimStatus.ALREADY_SENT:
                SKIPPED.labels(self.channel).inc()
                self._note_deduplicated(job)
                continue
            if claim.status == ClaimStatus.IN_FLIGHT:
                # Another worker holds the lease (or crashed holding it): look again after the lease
                # could have expired, without counting an attempt.
                self._park(job, delay=self.config.tiers[0][1], error=None)
                continue
            job.claimed = True
            to_send.append(job)
        if not to_send:
            return
        if self.channel == "inapp":
            await self._send_inapp(to_send)
            return
        await asyncio.gather(*(self._deliver(job) for job in to_send))

    async def _deliver(self, job: Job) -> None:
        """Send one job: pick a provider, take a token, send, and settle the outcome."""
        for in_process_retry in range(self.config.max_in_process_retries + 1):
            slot = self._pick_provider(job.body.get("to", {}).get("platform"))
            if slot is None:
                self._release_and_park(
                    job,
                    delay=None,
                    error={"error_class": "no_provider", "message": "every provider is open or disabled"},
                )
                return
            async with self._sem:  # type: ignore[union-attr]
                # The token is taken inside the concurrency slot, right before the call, so the gap
                # between grant and arrival at the provider stays small (rate accuracy).
                try:
                    await self._take_campaign_token(job)
                    await self._take_token(slot, job)
                except RateLimiterUnavailable:
                    self._release_and_park(job, delay=None, error={"error_class": "rate_limiter_unavailable"})
                    return
                result = await slot.adapter.send(job.body)
            SENDS.labels(self.channel, slot.name, result.outcome).inc()
            job.attempt += 1
            if result.outcome == SendOutcome.SENT:
                slot.breaker.record_success()
                self.dedup.confirm(job.key)
                self._record(job, "sent", provider=slot.name, provider_message_id=result.provider_message_id)
                if result.invalid_tokens:
                    self._invalid_contacts.append((job.body, result))
                return
            job.errors.append(_error_entry(result, slot.name, self.now()))
            if result.outcome in (SendOutcome.PERMANENT, SendOutcome.INVALID_CONTACT):
                slot.breaker.record_success()  # the provider works; this message does not
                if result.outcome == SendOutcome.INVALID_CONTACT:
                    self._invalid_contacts.append((job.body, result))
                self._release_and_dead_letter(job, result.outcome.value, result.message, slot.name)
                return
            if result.outcome == SendOutcome.RATE_LIMITED:
                # Not a failure of the provider: hold its bucket until the reset, and do not count
                # this try against the attempt budget.
                job.attempt -= 1
                if result.retry_after:
                    self.bucket.hold_for(slot.name, result.retry_after, rate=slot.rate, burst=slot.burst)
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
                return
            if (
                decision.action == RetryAction.RETRY_IN_PROCESS
                and in_process_retry < self.config.max_in_process_retries
            ):
                await asyncio.sleep(decision.delay)
                continue
            self._release_and_park(job, delay=decision.delay, error=None)
            return
        self._release_and_park(job, delay=None, error=None)

    async def _send_inapp(self, jobs: list[Job]) -> None:
        """The inbox is written in bulk: one insert for the whole batch (idempotent per message)."""
        slot = self._pick_provider()
        if slot is None:
            for job in jobs:
                self._release_and_park(job, delay=None, error={"error_class": "no_provider"})
            return
        results = await slot.adapter.send_many([j.body for j in jobs])  # type: ignore[attr-defined]
        confirmed = []
        for job, result in zip(jobs, results, strict=True):
            job.attempt += 1
            SENDS.labels(self.channel, slot.name, result.outcome).inc()
            if result.outcome == SendOutcome.SENT:
                confirmed.append(job.key)
                self._record(job, "sent", provider=slot.name)
            else:
                job.errors.append(_error_entry(result, slot.name, self.now()))
                if result.outcome in (SendOutcome.PERMANENT, SendOutcome.INVALID_CONTACT):
                    self._release_and_dead_letter(job, result.outcome.value, result.message, slot.name)
                else:
                    self._release_and_park(job, delay=None, error=None)
        if confirmed:
            self.dedup.confirm_many(confirmed)

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
            elif halt == "paused":
                self._park(job, delay=self.config.tiers[0][1], error=None)
            else:
                kept.append(job)
        return kept

    def _note_deduplicated(self, job: Job) -> None:
        meta = job.body.get("meta")
        if meta and job.body.get("event_id"):
            entry = LogEntry(
                event_id=job.body["event_id"],
                user_id=int(job.body.get("user_id") or 0),
                channel=self.channel,
                type=job.body.get("type", ""),
                status="deduplicated",
            )
            self._deduplicated.append((entry, meta))

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
            dispenser = TokenDispenser(bucket=self.bucket, name=name, contract=lambda r=float(rate), b=burst: (r, b, 0))
            self._dispensers[name] = dispenser
        await dispenser.acquire("transactional")

    async def _take_token(self, slot: ProviderSlot, job: Job) -> None:
        dispenser = self._dispensers.get(slot.name)
        if dispenser is None:
            dispenser = TokenDispenser(
                bucket=self.bucket, name=slot.name, contract=lambda s=slot: (s.rate, s.burst, s.reserve)
            )
            self._dispensers[slot.name] = dispenser
        started = time.monotonic()
        await dispenser.acquire(job.body.get("priority", "transactional"))
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
        self._produce(channel_topic(self.channel, f"retry.{tier}"), job, headers)
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
        self._metas.append(body.get("meta"))
        self._outcomes.append(
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
