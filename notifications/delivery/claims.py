"""A channel worker's dedup claims over a job's life: claimed per batch, checked before the send (fencing),
confirmed after it, given up with the job's outcome otherwise.

A mixin of `ChannelWorker` (`worker.py`), over the worker's state named below. How and why:
`docs/architecture.md`, "Delivery" (dedup, claim owners, take-over and fencing).
"""

import asyncio
import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from prometheus_client import Counter

from notifications.delivery.dedup import ClaimResult, ClaimStatus, DedupStore
from notifications.delivery.hooks import MessageHooks
from notifications.delivery.jobs import Job
from notifications.delivery.kill_switches import SwitchStop, apply_switch_stop
from notifications.delivery.liveness import Liveness
from notifications.delivery.outcomes import Outcomes
from notifications.delivery.redis_hold import RedisHold

if TYPE_CHECKING:
    from notifications.delivery.worker import WorkerConfig

log = logging.getLogger(__name__)

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


class ClaimSteps:
    """The claim steps of a `ChannelWorker` (see the module docstring)."""

    channel: str
    dedup: DedupStore
    liveness: Liveness
    hold: RedisHold
    hooks: MessageHooks
    outcomes: Outcomes
    config: "WorkerConfig"
    done: queue.SimpleQueue[Job]
    _active: set[Job]
    _revoked: set[tuple[str, int]]
    _stopping: bool
    _confirm_queue: list[Job]
    _confirm_scheduled: bool
    _confirm_running: bool
    _confirm_executor: ThreadPoolExecutor
    _redis_executor: ThreadPoolExecutor
    _confirming: set[asyncio.Task]
    _wait_for_redis: Callable  # RedisHoldSteps

    def _completed(self, job: Job) -> None:
        self.done.put(job)

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

    # -- fencing: is the claim still ours right before the send? --------------------------------------
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

    async def _check_claims_after_gap(self) -> None:
        """The liveness keys had a gap: the claims in hand made before it are read back in Redis now,
        in one pipeline off the event loop, so their sends pass the check before the send without a
        round trip each between the send slot and the send. A claim found ours is vouched for from
        the time of this read; any other is left to the check before its send."""
        jobs = [
            job
            for job in self._active
            if job.claimed and not job.fail_open and not self.liveness.vouches_for(job.claimed_at)
        ]
        if not jobs:
            return
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        owned = await loop.run_in_executor(self._redis_executor, self.dedup.owned_many, [job.key for job in jobs])
        for job in jobs:
            if owned is not None and owned.get(job.key) and (job.claimed_at or started) < started:
                job.claimed_at = started

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

    def _note_deduplicated(self, job: Job) -> None:
        if job.body.get("meta"):
            job.meta_outcomes.append((job.key, "deduplicated", job.body["meta"]))

    # -- confirms ---------------------------------------------------------------------------------------
    def _queue_confirm(self, job: Job) -> None:
        """Confirm a sent job together with every other send completed meanwhile (see `_flush_confirms`)."""
        self._confirm_queue.append(job)
        if not self._confirm_scheduled:
            self._confirm_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_confirms)

    def _flush_confirms(self) -> None:
        """One confirm call on the confirm thread, for every send finished since the last one started:
        its round trip never holds up the event loop (where sends wake at their slots), and while it
        is under way the sends finishing meanwhile gather for the next call."""
        self._confirm_scheduled = False
        if self._confirm_running or not self._confirm_queue:
            return
        jobs, self._confirm_queue = self._confirm_queue, []
        self._confirm_running = True
        future = asyncio.get_running_loop().run_in_executor(self._confirm_executor, self._confirm, jobs)
        future.add_done_callback(lambda done: self._confirmed(jobs, done))

    def _confirmed(self, jobs: list[Job], future: "asyncio.Future[bool]") -> None:
        """A confirm call ended (on the event loop): the jobs are done, or wait for Redis (`_confirm_later`)."""
        self._confirm_running = False
        if future.cancelled():  # the worker is closing: the jobs stay uncommitted
            return
        if future.exception() is not None:
            log.error("dedup confirm failed", exc_info=future.exception())
        if not (future.exception() is None and future.result()) and self.hold.failed("dedup confirm"):
            task = asyncio.ensure_future(self._confirm_later(jobs))
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)
        else:
            for job in jobs:
                self._completed(job)
        self._flush_confirms()

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

    # -- giving a claim up with the job's outcome -----------------------------------------------------
    def _abandon(self, job: Job) -> None:
        """The worker stops before this job got a token: nothing was sent; give the claim up so the
        next owner of the partition sends it at once, and leave its offset uncommitted."""
        if job.claimed:
            self.dedup.release(job.key)
        job.abandoned = True
        job.entries.clear()
        job.meta_outcomes.clear()

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
