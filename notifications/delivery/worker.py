"""The channel worker: dedup claim → send slot → send → confirm, with retries, failover and a DLQ.

One `ChannelWorker` serves one channel on its own event loop; `PipelinedWorkerRunner`
(`pipeline.py`) feeds it polled jobs (`jobs.py`) and settles what `outcomes.py` recorded. This module
holds its life cycle and the batch step; the steps of one job are mixins beside it: its claim
(`claims.py`: claimed per batch, checked before the send, confirmed after it), its send
(`sending.py`: provider choice, send slot, the provider's answer) and waiting for Redis
(`redis_hold.py`). How and why: `docs/architecture.md`, "Delivery".
"""

import asyncio
import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from confluent_kafka import Message

from notifications.bus.runner import Deferrals
from notifications.bus.topics import RETRY_TIERS
from notifications.delivery.backoff import RetryPolicy
from notifications.delivery.claims import CLAIMS_TAKEN_OVER, SKIPPED, ClaimSteps
from notifications.delivery.dedup import ClaimStatus, DedupStore
from notifications.delivery.dispenser import TokenDispenser
from notifications.delivery.endpoint_backoff import EndpointBackoff
from notifications.delivery.hooks import MessageHooks, NoHooks
from notifications.delivery.jobs import Job, read_batch
from notifications.delivery.kill_switches import WorkerSwitches
from notifications.delivery.liveness import Liveness
from notifications.delivery.outcomes import Outcomes
from notifications.delivery.provider_slots import ProviderSlot
from notifications.delivery.redis_hold import RedisHold, RedisHoldSteps
from notifications.delivery.sending import SendSteps
from notifications.delivery.token_bucket import TokenBucket

log = logging.getLogger(__name__)


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


class ChannelWorker(SendSteps, ClaimSteps, RedisHoldSteps):
    """One channel's sends on one event loop: jobs are claimed per batch, then each is sent on its own
    task (bounded by `concurrency`) and reported on `done` once it has its outcome."""

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
        self._confirm_running = False
        #: Confirms, one call at a time: their round trips off the event loop (see `_flush_confirms`).
        self._confirm_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"worker-{self.channel}-confirm")
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
        self._background.append(
            asyncio.ensure_future(self.liveness.run(self._redis_executor, after_gap=self._check_claims_after_gap))
        )

    async def close_background(self) -> None:
        """Stop the liveness refreshes, any Redis probe and the confirm thread (in the event loop)."""
        for task in self._background:
            task.cancel()
        self.hold.close()
        self._redis_executor.shutdown(wait=False, cancel_futures=True)
        self._confirm_executor.shutdown(wait=False, cancel_futures=True)

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

    # -- the producer's halts ---------------------------------------------------------------------------------
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
