"""One job's send: choose a provider (kill switches, breakers), wait for a send slot, send, and act on the answer.

A mixin of `ChannelWorker` (`worker.py`), over the worker's state named below. How and why:
`docs/architecture.md`, "Delivery" and "Rate limits".
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from notifications.delivery.backoff import RetryAction, RetryPolicy
from notifications.delivery.dedup import ClaimStatus, DedupStore
from notifications.delivery.dispenser import TokenDispenser
from notifications.delivery.endpoint_backoff import EndpointBackoff
from notifications.delivery.hooks import MessageHooks
from notifications.delivery.jobs import Job
from notifications.delivery.kill_switches import SwitchStop, WorkerSwitches
from notifications.delivery.outcomes import Outcomes, error_entry
from notifications.delivery.provider_slots import ProviderSlot
from notifications.delivery.redis_hold import RedisHold
from notifications.delivery.token_bucket import RateLimiterUnavailable, TokenBucket
from notifications.priority import message_priority
from notifications.providers.results import SendOutcome, SendResult

if TYPE_CHECKING:
    from notifications.delivery.worker import WorkerConfig

SENDS = Counter("worker_sends_total", "Provider calls by outcome", ["channel", "provider", "outcome"])
TOKEN_WAIT = Histogram(
    "worker_token_wait_seconds",
    "Time spent waiting for rate-limit tokens",
    ["provider"],
    buckets=(0, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10),
)

#: Messages held back by an endpoint pause return over [resume, resume + this share of the wait].
ENDPOINT_RETURN_SPREAD = 0.25


class SendSteps:
    """The send steps of a `ChannelWorker` (see the module docstring); claims come from `ClaimSteps`."""

    channel: str
    config: "WorkerConfig"
    providers: Callable[[], list[ProviderSlot]]
    dedup: DedupStore
    bucket: TokenBucket
    policy: RetryPolicy
    outcomes: Outcomes
    hooks: MessageHooks
    switches: WorkerSwitches
    endpoints: EndpointBackoff
    hold: RedisHold
    now: Callable[[], float]
    _sem: asyncio.Semaphore | None
    _dispensers: dict[str, TokenDispenser]
    _stopping: bool
    _revoked: set[tuple[str, int]]

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
            if self._held_back_for_endpoint(job, slot):
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
            self._note_failed_send(slot, result)
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

    def _held_back_for_endpoint(self, job: Job, slot: ProviderSlot) -> bool:
        """True when the job's endpoint is paused (it asked to be, or kept failing) and the job was
        parked until then (or dead-lettered, when that is past its age): only its messages wait, not
        counted as an attempt, spread over a quarter of the wait so they do not return as one burst."""
        scope = slot.adapter.backpressure_scope(job.body)
        if not scope or (wait := self.endpoints.wait(scope)) <= 0:
            return False
        wait *= 1 + ENDPOINT_RETURN_SPREAD * self.policy.rng.random()
        if self.now() + wait >= job.first_attempt_at + self.policy.max_age_seconds:
            self._release_and_dead_letter(job, "max_age", f"{scope} paused past the message's age", slot.name)
        else:
            self._release_and_park(job, delay=wait, error={"error_class": "endpoint_paused", "scope": scope})
        return True

    def _note_failed_send(self, slot: ProviderSlot, result: SendResult) -> None:
        """A retryable answer: who is to blame decides what pauses. A 429 holds the provider's bucket
        (or pauses one endpoint); an endpoint's 5xx counts in its failure run; anything else is the
        provider's failure (its breaker)."""
        if result.outcome == SendOutcome.RATE_LIMITED:
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
