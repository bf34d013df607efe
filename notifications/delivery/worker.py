"""The channel worker: dedup claim → send slot → send → confirm, with retries, failover and a DLQ.

One `ChannelWorker` serves one channel on its own event loop; `PipelinedWorkerRunner`
(`pipeline.py`) feeds it polled jobs (`jobs.py`) and settles what `outcomes.py` recorded. Sends run
concurrently (bounded by `concurrency`); claims are one pipeline per batch, and the confirms of every
send finished in one loop iteration one pipeline. How and why: `docs/architecture.md`, "Delivery".
"""

import asyncio
import logging
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Message
from prometheus_client import Counter, Histogram

from notifications.bus.runner import Deferrals
from notifications.bus.topics import RETRY_TIERS
from notifications.delivery.backoff import RetryAction, RetryPolicy
from notifications.delivery.dedup import ClaimStatus, DedupStore
from notifications.delivery.dispenser import TokenDispenser
from notifications.delivery.endpoint_backoff import EndpointBackoff
from notifications.delivery.jobs import Job, read_batch
from notifications.delivery.kill_switches import SwitchStop, WorkerSwitches, apply_switch_stop
from notifications.delivery.outcomes import Outcomes, error_entry
from notifications.delivery.provider_slots import ProviderSlot
from notifications.delivery.token_bucket import RateLimiterUnavailable, TokenBucket
from notifications.dispatch.messages import ChannelMessage
from notifications.priority import message_priority
from notifications.providers.results import SendOutcome

log = logging.getLogger(__name__)

SENDS = Counter("worker_sends_total", "Provider calls by outcome", ["channel", "provider", "outcome"])
SKIPPED = Counter("worker_dedup_skipped_total", "Messages not sent because dedup says already sent", ["channel"])
TOKEN_WAIT = Histogram(
    "worker_token_wait_seconds",
    "Time spent waiting for rate-limit tokens",
    ["provider"],
    buckets=(0, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10),
)

#: Messages held back by an endpoint pause return over [resume, resume + this share of the wait].
ENDPOINT_RETURN_SPREAD = 0.25


@dataclass(frozen=True)
class Halt:
    """A message the app that produced it stopped: dropped (recorded suppressed with `reason`), or held
    back in the first retry tier (`hold`)."""

    hold: bool
    reason: str


class MessageHooks(Protocol):
    """What the app that produced a message adds to its delivery (campaigns: `campaigns.delivery_hooks`)."""

    def halts(self, messages: Sequence[ChannelMessage]) -> dict[str, Halt]: ...

    def throttle(self, message: ChannelMessage) -> tuple[str, float, int] | None: ...

    def sent_tally(self, message: ChannelMessage) -> str | None: ...

    def record(self, outcomes: list[tuple[str, str, dict]]) -> None: ...


class NoHooks:
    def halts(self, messages: Sequence[ChannelMessage]) -> dict[str, Halt]:
        return {}

    def throttle(self, message: ChannelMessage) -> tuple[str, float, int] | None:
        return None

    def sent_tally(self, message: ChannelMessage) -> str | None:
        return None

    def record(self, outcomes: list[tuple[str, str, dict]]) -> None:
        return None


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
        outcomes: Outcomes,
        hooks: MessageHooks | None = None,
        switches: WorkerSwitches | None = None,
        endpoints: EndpointBackoff | None = None,
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
        self.outcomes = outcomes
        self.hooks = hooks or NoHooks()
        self.switches = switches or WorkerSwitches(config.channel)  # all normal until refreshed
        #: Pauses of a part of a provider (a webhook endpoint); without Redis, this process's own.
        self.endpoints = endpoints or EndpointBackoff(None, "")
        self.now = wall_clock
        self.loop = loop or asyncio.new_event_loop()
        self._sem: asyncio.Semaphore | None = None
        self._dispensers: dict[str, TokenDispenser] = {}
        #: Jobs with an outcome, in completion order (put by the event loop, taken by the settler).
        self.done: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._confirm_queue: list[Job] = []
        self._confirm_scheduled = False
        self._stopping = False
        self._revoked: set[tuple[str, int]] = set()
        self._active: set[Job] = set()

    # -- the consumer thread's side ------------------------------------------------------------------
    def prepare(self, messages: list[Message]) -> tuple[list[Job], Deferrals, list[Message]]:
        """Read a polled batch: the jobs, the deferrals (retry-tier messages not due yet) and the
        messages already taken care of (unreadable ones dead-lettered, long waits parked again at
        the end of their tier: durable once settled)."""
        batch = read_batch(messages, now=self.now())
        for item in batch.unreadable:
            self.outcomes.dead_letter_unreadable(item)
        for message in batch.recirculate:
            self.outcomes.park_again(message)
        return batch.jobs, batch.deferrals, [item.message for item in batch.unreadable] + batch.recirculate

    def submit(self, jobs: list[Job]) -> "asyncio.Future[None]":
        """Start `jobs` on the worker's event loop (another thread); each job is put on `done` when
        it has its outcome."""
        return asyncio.run_coroutine_threadsafe(self._process(jobs), self.loop)

    def settle(self, jobs: list[Job]) -> None:
        """Make the outcomes of finished jobs durable (see `Outcomes.settle`); only then may their
        offsets be committed. Also re-reads the kill switches when due: settling runs on the consumer
        thread every few hundred ms, even while every send slot is taken and no batch is started."""
        self.outcomes.settle(jobs)
        self.switches.refresh_if_due()

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
        jobs = self._apply_halts(jobs)
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
                self.outcomes.park(job, delay=self.config.tiers[0][1])
                self._completed(job)
                continue
            job.claimed = True
            to_send.append(job)
        if not to_send:
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
        each campaign message's send in the same script (`sent_tally`: the name of its counter)."""
        tallies = {job.key: tally for job in jobs if (tally := self.hooks.sent_tally(job.body)) is not None}
        self.dedup.confirm_many([job.key for job in jobs], tallies=tallies)

    async def _deliver(self, job: Job) -> bool:
        """Send one job: pick a provider, take a token, send, and settle the outcome. Returns True
        when the job was sent and its confirm is queued (it is reported done by the confirm flush)."""
        for in_process_retry in range(self.config.max_in_process_retries + 1):
            slot = self.switches.choose(job.body, self.providers(), job.body.get("to", {}).get("platform"))
            if isinstance(slot, SwitchStop):
                self._release_and_stop(job, slot)
                return False
            if slot is None:
                self._release_and_park(
                    job,
                    delay=None,
                    error={"error_class": "no_provider", "message": "every provider is open or disabled"},
                )
                return False
            scope = slot.adapter.backpressure_scope(job.body)
            if scope and (wait := self.endpoints.wait(scope)) > 0:
                # That endpoint is paused (it asked to be, or kept failing): only its messages wait,
                # not counted as an attempt, spread over a quarter of the wait so they do not return
                # as one burst.
                wait *= 1 + ENDPOINT_RETURN_SPREAD * self.policy.rng.random()
                if self.now() + wait >= job.first_attempt_at + self.policy.max_age_seconds:
                    self._release_and_dead_letter(job, "max_age", f"{scope} paused past the message's age", slot.name)
                else:
                    self._release_and_park(job, delay=wait, error={"error_class": "endpoint_paused", "scope": scope})
                return False
            # First a place among the provider's requests in flight, then a concurrency slot, then
            # the token right before the call, so the gap between grant and arrival at the provider
            # stays small (rate accuracy) and the send deadline never covers a wait for a connection.
            limit = slot.in_flight
            admitted = await limit.acquire(slot.adapter.requests_for(job.body)) if limit is not None else 0
            try:
                async with self._sem:  # type: ignore[union-attr]
                    try:
                        await self._take_throttle_token(job)
                        await self._take_token(slot, job)
                    except RateLimiterUnavailable:
                        self._release_and_park(job, delay=None, error={"error_class": "rate_limiter_unavailable"})
                        return False
                    if self.switches.stops(job.body, slot):  # pulled while this job waited: choose again
                        continue
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
                if result.scope:
                    self.endpoints.succeeded(result.scope)
                self.outcomes.record(job, "sent", provider=slot.name, provider_message_id=result.provider_message_id)
                if result.invalid_tokens:
                    job.invalid.append((job.body, result))
                self._queue_confirm(job)
                return True
            job.errors.append(error_entry(result, slot.name, self.now()))
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
                if result.scope:  # one endpoint's back-pressure: pause that endpoint alone
                    if result.retry_after:
                        self.endpoints.pause(result.scope, result.retry_after)
                    else:  # no Retry-After: a run of them pauses it as a run of failures does
                        self.endpoints.failed(result.scope)
                elif result.retry_after:
                    self.bucket.hold_for(slot.name, result.retry_after, rate=slot.rate, burst=slot.burst)
                    if (dispenser := self._dispensers.get(slot.name)) is not None:
                        dispenser.hold(result.retry_after)
            elif result.outcome == SendOutcome.TRANSIENT and result.scope:
                self.endpoints.failed(result.scope)  # one endpoint unwell: its failure run, not the breaker
            else:  # transient or configuration: the provider is unwell
                slot.breaker.record_failure()
            retry_after = result.retry_after
            if result.outcome == SendOutcome.RATE_LIMITED and retry_after:
                # Everyone throttled at the same moment got the same Retry-After: spread the retries
                # over [retry_after, 2 x retry_after] so they do not return as one burst (an
                # endpoint's over a quarter of it: its own messages only, and its in-flight cap).
                retry_after *= 1 + (ENDPOINT_RETURN_SPREAD if result.scope else 1.0) * self.policy.rng.random()
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
        job.meta_outcomes.clear()

    # -- providers and tokens ---------------------------------------------------------------------
    def _apply_halts(self, jobs: list[Job]) -> list[Job]:
        """Drop the messages their producer stopped (a cancelled campaign); hold back the paused."""
        halts = self.hooks.halts([job.body for job in jobs])
        if not halts:
            return jobs
        kept = []
        for job in jobs:
            halt = halts.get(job.key)
            if halt is None:
                kept.append(job)
                continue
            if halt.hold:
                self.outcomes.park(job, delay=self.config.tiers[0][1])
            else:
                self.outcomes.record(job, "suppressed", reason=halt.reason)
            self._completed(job)
        return kept

    def _note_deduplicated(self, job: Job) -> None:
        if job.body.get("meta"):
            job.meta_outcomes.append((job.key, "deduplicated", job.body["meta"]))

    async def _take_throttle_token(self, job: Job) -> None:
        """A message producer's own throttle (a campaign's max sends/s), on top of the provider's contract."""
        throttle = self.hooks.throttle(job.body)
        if throttle is None:
            return
        name, rate, burst = throttle
        dispenser = self._dispensers.get(name)
        if dispenser is None:
            dispenser = TokenDispenser(
                bucket=self.bucket,
                name=name,
                contract=lambda: (rate, burst, 0),
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

    # -- outcomes -----------------------------------------------------------------------------------
    def _release_and_park(self, job: Job, *, delay: float | None, error: dict | None) -> None:
        if job.claimed:
            self.dedup.release(job.key)
        self.outcomes.park(job, delay=delay if delay is not None else self.config.tiers[0][1], error=error)

    def _release_and_stop(self, job: Job, stop: SwitchStop) -> None:
        if job.claimed:
            self.dedup.release(job.key)
        apply_switch_stop(self.outcomes, job, stop)

    def _release_and_dead_letter(self, job: Job, error_class: str, message: str, provider: str) -> None:
        if job.claimed:
            self.dedup.release(job.key)  # a replay from the DLQ must be able to send it later
        self.outcomes.dead_letter(job, error_class=error_class, message=message, provider=provider)
