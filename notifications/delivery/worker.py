"""The channel worker: dedup claim → send slot → send → confirm, with retries, failover and a DLQ.

One `ChannelWorker` serves one channel on its own event loop; `PipelinedWorkerRunner`
(`pipeline.py`) feeds it polled jobs (`jobs.py`) and settles what `outcomes.py` recorded. Sends run
concurrently (bounded by `concurrency`); claims are one pipeline per batch, and the confirms of every
send finished in one loop iteration one pipeline. While Redis is briefly away the messages in hand
wait for it (`redis_hold.py`); a claim is checked to be still ours before its send when the worker's
liveness keys may have lapsed since it was made (`liveness.py`). How and why: `docs/architecture.md`,
"Delivery".
"""

import asyncio
import logging
import queue
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Message
from prometheus_client import Counter, Histogram

from notifications.bus.runner import Deferrals
from notifications.bus.topics import RETRY_TIERS
from notifications.delivery.backoff import RetryAction, RetryPolicy
from notifications.delivery.dedup import ClaimResult, ClaimStatus, DedupStore
from notifications.delivery.dispenser import TokenDispenser
from notifications.delivery.endpoint_backoff import EndpointBackoff
from notifications.delivery.jobs import Job, read_batch
from notifications.delivery.kill_switches import SwitchStop, WorkerSwitches, apply_switch_stop
from notifications.delivery.liveness import Liveness
from notifications.delivery.outcomes import Outcomes, error_entry
from notifications.delivery.provider_slots import ProviderSlot
from notifications.delivery.redis_hold import RedisHold
from notifications.delivery.token_bucket import RateLimiterUnavailable, TokenBucket
from notifications.dispatch.messages import ChannelMessage
from notifications.priority import message_priority
from notifications.providers.results import SendOutcome

log = logging.getLogger(__name__)

SENDS = Counter("worker_sends_total", "Provider calls by outcome", ["channel", "provider", "outcome"])
SKIPPED = Counter("worker_dedup_skipped_total", "Messages not sent because dedup says already sent", ["channel"])
CLAIMS_TAKEN_OVER = Counter(
    "worker_claims_taken_over_total",
    "Claims taken over from a worker that died, stalled or was restarted (instead of waiting for its lease)",
    ["channel"],
)
CLAIMS_LOST = Counter(
    "worker_claims_lost_total",
    "Messages not sent because another worker took their claim over before the send (a stall, a gap in liveness)",
    ["channel"],
)
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
    #: While Redis is away for less than this, the messages in hand wait for it (0: never wait).
    redis_hold_seconds: float = 30.0
    #: The dedup owner's liveness keys: their TTL, and how often the event loop refreshes them.
    liveness_ttl: float = 3.0
    liveness_interval: float = 1.0


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
        #: Set (and cleared at once) on a revocation or a stop: wakes batches waiting for Redis to claim.
        self._interrupted = asyncio.Event()
        #: Liveness refreshes and Redis probes: off the event loop, and never behind provider sends.
        self._redis_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"worker-{self.channel}-redis")
        self.liveness = Liveness(dedup, ttl=config.liveness_ttl, interval=config.liveness_interval)
        self.hold = RedisHold(
            channel=self.channel,
            bound=config.redis_hold_seconds,
            probe=self._probe_redis,
            on_back=self._redis_back,
            executor=self._redis_executor,
        )
        self._background: list[asyncio.Task] = []
        self._confirming: set[asyncio.Task] = set()  # sends confirmed once Redis is back

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

    def start_background(self) -> None:
        """Start the liveness refreshes (call in the event loop, once)."""
        self._background.append(asyncio.ensure_future(self.liveness.run(self._redis_executor)))

    async def close_background(self) -> None:
        """Stop the liveness refreshes and any Redis probe (in the event loop)."""
        for task in self._background:
            task.cancel()
        self.hold.close()
        self._redis_executor.shutdown(wait=False, cancel_futures=True)

    def stop_sending(self) -> None:
        """Graceful stop (call in the event loop): sends in progress finish; jobs still waiting for a
        concurrency slot, a token or Redis give their claim up and are not committed (redelivered later)."""
        self._stopping = True
        self._give_up_waiting(lambda job: True)
        self._interrupt_waits()
        for dispenser in self._dispensers.values():
            if dispenser.forfeited:
                log.info("%s: %d send slot(s) given up for starting too late", dispenser.name, dispenser.forfeited)

    def revoke(self, partitions: set[tuple[str, int]]) -> None:
        """Partitions taken away by a rebalance (call in the event loop): their jobs still waiting
        for a slot or a token are given up at once, so the revocation (and with it the rebalance
        of every worker) waits only for the sends already under way."""
        self._revoked |= partitions
        self._give_up_waiting(lambda job: job.partition in partitions)
        self._interrupt_waits()

    def reinstate(self, partitions: set[tuple[str, int]]) -> None:
        """Partitions assigned (again) to this worker (call in the event loop)."""
        self._revoked -= partitions

    def _give_up_waiting(self, which: Callable[[Job], bool]) -> None:
        for job in list(self._active):
            if not job.sending and job.task is not None and which(job):
                job.task.cancel()

    def _interrupt_waits(self) -> None:
        self._interrupted.set()
        self._interrupted.clear()

    async def _process(self, jobs: list[Job]) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.config.concurrency)
        await self._process_jobs(jobs)

    async def _process_jobs(self, jobs: list[Job]) -> None:
        jobs = self._apply_halts(jobs)
        jobs, claims = await self._claim(jobs)
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
            job.fail_open = claim.fail_open
            if claim.taken_over:
                CLAIMS_TAKEN_OVER.labels(self.channel).inc()
            to_send.append(job)
        if not to_send:
            return
        tasks = []
        for job in to_send:
            self._active.add(job)  # from now on its claim is in use (see _claim's `mine`)
            job.task = asyncio.ensure_future(self._deliver_and_report(job))
            tasks.append(job.task)
        await asyncio.gather(*tasks)

    async def _claim(self, jobs: list[Job]) -> tuple[list[Job], dict[str, ClaimResult]]:
        """Claim the batch (one pipeline). While Redis is away, within the hold's bound, the batch
        waits for it; jobs whose partition is revoked meanwhile (every job, on a stop) are given up.
        Beyond the bound the claims fail open, counted, as they did before holds existed."""
        mine: set[str] = set()
        while jobs:
            keys = [job.key for job in jobs]
            started = time.monotonic()
            claims = self.dedup.try_claim_many(keys, mine=mine)
            if claims is None:
                if self.hold.failed("dedup claim"):
                    await self._wait_for_redis(interruptible=True)
                    jobs = self._drop_given_up(jobs)
                    # The failed call may have made some claims: ours, unless a job in progress has
                    # the same message (then it is in flight, as always).
                    mine = {job.key for job in jobs} - {job.key for job in self._active}
                    continue
                claims = self.dedup.claim_many(keys)
            for job in jobs:
                job.claimed_at = started
            return jobs, claims
        return [], {}

    def _drop_given_up(self, jobs: list[Job]) -> list[Job]:
        """Jobs of revoked partitions (all of them when stopping) leave uncommitted; the rest stay."""
        kept, given_up = [], []
        for job in jobs:
            (given_up if self._stopping or job.partition in self._revoked else kept).append(job)
        if given_up:
            self.dedup.release_many([job.key for job in given_up])  # claims a failed call may have made
            for job in given_up:
                job.abandoned = True
                job.entries.clear()
                job.meta_outcomes.clear()
                self._completed(job)
        return kept

    async def _wait_for_redis(self, *, interruptible: bool = False) -> bool:
        """True once Redis answers again (at once when no hold is on); False when the hold's bound
        passed first, or (`interruptible`) a revocation or a stop came first."""
        if not interruptible:
            return await self.hold.wait()
        back = asyncio.ensure_future(self.hold.wait())
        interrupted = asyncio.ensure_future(self._interrupted.wait())
        try:
            await asyncio.wait({back, interrupted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted.cancel()
        if back.done():
            return back.result()
        back.cancel()
        return False

    def _probe_redis(self) -> None:
        """Does Redis answer (the hold's probe, on the Redis thread)? Raises while it does not. With an
        owner the probe is a liveness refresh: every dedup shard's master answers, and the worker's
        claims are covered again as soon as it is back."""
        if self.liveness.enabled:
            if self.liveness.refresh() is None:
                raise ConnectionError("the liveness refresh failed")
        else:
            self.dedup.client.ping()
        if self.bucket.client is not self.dedup.client:
            self.bucket.client.ping()

    def _redis_back(self) -> None:
        """Redis answers again: the breakers that opened meanwhile close, so the held messages go on at once."""
        self.dedup.breaker.reset()
        self.bucket.breaker.reset()

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
        if not self._confirm(jobs) and self.hold.failed("dedup confirm"):
            task = asyncio.ensure_future(self._confirm_later(jobs))
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)
            return
        for job in jobs:
            self._completed(job)

    async def _confirm_later(self, jobs: list[Job]) -> None:
        """Sent, but Redis was away for the confirm: confirm once it is back (the 'sent' markers keep
        copies from being sent again, and campaigns count their sends), at most until the hold's
        bound; only then are the jobs done (and their offsets committable)."""
        while await self._wait_for_redis():
            if self._confirm(jobs) or not self.hold.failed("dedup confirm"):
                break
        for job in jobs:
            self._completed(job)

    def _confirm(self, jobs: list[Job]) -> bool:
        """Mark the jobs' sends in the dedup store, counting each campaign message's send in the same
        script (`sent_tally`: the name of its counter). False when Redis could not be reached (never
        raises: per-key errors are logged)."""
        tallies = {job.key: tally for job in jobs if (tally := self.hooks.sent_tally(job.body)) is not None}
        return self.dedup.try_confirm_many([job.key for job in jobs], tallies=tallies) is not None

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
                    if not await self._ready_to_send(slot, job):
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

    async def _ready_to_send(self, slot: ProviderSlot, job: Job) -> bool:
        """Take the send slot (and the campaign throttle's token), then make sure the claim is still
        ours, with no wait between that check and the send. While Redis is away, within the hold's
        bound, wait for it (and take the slot again: the one held is stale by then). False when the
        job ended otherwise: parked (the bucket beyond the bound), or dropped (its claim was lost)."""
        takes: tuple[Callable[[], Awaitable[None]], ...] = (
            lambda: self._take_throttle_token(job),
            lambda: self._take_token(slot, job),
        )
        while True:
            for take in takes:
                while True:
                    try:
                        await take()
                        break
                    except RateLimiterUnavailable:
                        if self.hold.failed("token bucket") and await self._wait_for_redis():
                            continue
                        self._release_and_park(job, delay=None, error={"error_class": "rate_limiter_unavailable"})
                        return False
            status = self._check_claim(job)
            if status is not None:
                break
            if self.hold.failed("dedup check") and await self._wait_for_redis():
                continue
            self.dedup.fail_open([job.key], "claim check unavailable")  # beyond the bound: send, counted
            status = ClaimStatus.CLAIMED
        if status is ClaimStatus.CLAIMED:
            return True
        self._claim_lost(job, status)
        return False

    def _check_claim(self, job: Job) -> ClaimStatus | None:
        """CLAIMED when the job's claim is certainly still ours: made while the worker's liveness keys
        were alive without a gap since (no Redis call), or found ours (or free, and claimed again) in
        Redis. IN_FLIGHT / ALREADY_SENT when another worker took it over or sent it; None when Redis
        could not be asked."""
        if not job.claimed or job.fail_open or self.liveness.vouches_for(job.claimed_at):
            return ClaimStatus.CLAIMED
        started = time.monotonic()
        found = self.dedup.reclaim_many([job.key])
        if found is None:
            return None
        if found[job.key] is ClaimStatus.CLAIMED:
            job.claimed_at = started
        return found[job.key]

    def _claim_lost(self, job: Job, status: ClaimStatus) -> None:
        """The claim is another worker's now (this one stalled, or its liveness lapsed) or the message
        was sent meanwhile: not sent here. A job of a partition this worker lost is dropped (its new
        owner has it); otherwise it looks again later, like a message found in flight."""
        job.claimed = False  # nothing of ours to release
        CLAIMS_LOST.labels(self.channel).inc()
        log.warning(
            "claim taken over before the send: not sent",
            extra={"channel": self.channel, "key": job.key, "found": str(status)},
        )
        if status is ClaimStatus.ALREADY_SENT:
            SKIPPED.labels(self.channel).inc()
            self._note_deduplicated(job)
        elif self._stopping or job.partition in self._revoked:
            job.abandoned = True
            job.entries.clear()
            job.meta_outcomes.clear()
        else:
            self.outcomes.park(job, delay=self.config.tiers[0][1])

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
