"""Holding a worker's messages while Redis (dedup, token buckets) is briefly away, instead of parking
them in retry tiers or sending them without a claim: the hold (`RedisHold`) and the worker's steps
that wait on it (`RedisHoldSteps`, a mixin of `ChannelWorker`).

Why and the bound: `docs/architecture.md`, "Delivery" (worker loop) and "Failure policies at a glance".
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge

from notifications.outages import FIRST_WAIT, Outage

if TYPE_CHECKING:
    from notifications.delivery.dedup import DedupStore
    from notifications.delivery.liveness import Liveness
    from notifications.delivery.token_bucket import TokenBucket

log = logging.getLogger(__name__)

#: The probe's longest wait between tries (full jitter in [cap/2, cap]): Redis is seen back at most
#: this long after it answers again, well inside the "outage + 2 s" target for an urgent message; one
#: probe a second per worker costs Redis nothing. (The roles' 5 s cap is for outages they ride out.)
PROBE_MAX_WAIT = 1.0

HELD = Gauge("worker_redis_hold", "1 while a worker holds its messages until Redis answers again", ["channel"])
HOLDS = Counter(
    "worker_redis_holds_total",
    "Redis outages a worker held its messages through, by how the hold ended (back, or the bound passed)",
    ["channel", "outcome"],
)


class RedisHold:
    """One worker's hold: `failed()` when a Redis step of a message failed starts it (a probe retries
    Redis with capped, jittered backoff); `await wait()` returns True as soon as Redis answers again,
    False once the hold has lasted `bound` seconds (from then on callers do what they did before
    holds existed, until Redis is back). Event-loop side only, except `holding`."""

    def __init__(
        self,
        *,
        channel: str,
        bound: float,
        probe: Callable[[], None],
        on_back: Callable[[], None],
        executor: Executor,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        """`probe()` raises while Redis does not answer (it runs on `executor`); `on_back()` runs on
        the event loop when it answers again, before the waiting messages go on."""
        self.channel = channel
        self.bound = bound
        self.probe = probe
        self.on_back = on_back
        self.executor = executor
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not a secret
        self.since: float | None = None
        self._back: asyncio.Future[bool] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._prober: asyncio.Task[None] | None = None
        #: Read by the consumer thread (pause consumption while True).
        self.holding = False

    @property
    def expired(self) -> bool:
        """Redis has been away for longer than the bound (and is not back yet)."""
        return self._back is not None and self._back.done()

    def failed(self, what: str, exc: BaseException | None = None) -> bool:
        """A Redis step (`what`) failed: True while the messages may wait for Redis (`wait`), False
        when holds are off or this outage has outlasted the bound."""
        if self.bound <= 0:
            return False
        if self.since is None:
            loop = asyncio.get_running_loop()
            self.since = self._clock()
            self._back = loop.create_future()
            self._expiry = loop.call_later(self.bound, self._expire)
            self._prober = loop.create_task(self._probe(what, exc))
            self.holding = True
            HELD.labels(self.channel).set(1)
            log.warning(
                "Redis unavailable: holding messages until it answers",
                extra={"channel": self.channel, "step": what, "bound_seconds": self.bound},
            )
        return self.holding

    async def wait(self) -> bool:
        """True when Redis answered again (or no hold is on), False when the bound passed first."""
        back = self._back
        if back is None:
            return True
        return await asyncio.shield(back)

    async def _probe(self, what: str, exc: BaseException | None) -> None:
        outage = Outage(
            f"worker-{self.channel}.hold",
            first_wait=FIRST_WAIT,
            max_wait=PROBE_MAX_WAIT,
            rng=self._rng,
            clock=self._clock,
        )
        error: BaseException = exc or ConnectionError(f"Redis unavailable ({what})")
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(outage.failed("redis", error))
            try:
                await loop.run_in_executor(self.executor, self.probe)
            except Exception as failure:
                error = failure
                continue
            break
        outage.recovered()
        self._recovered()

    def _expire(self) -> None:
        self.holding = False
        HELD.labels(self.channel).set(0)
        if self._back is not None and not self._back.done():
            self._back.set_result(False)
            HOLDS.labels(self.channel, "bound").inc()
            log.warning(
                "Redis away for longer than the hold's bound: parking and failing open as without holds",
                extra={"channel": self.channel, "bound_seconds": self.bound},
            )

    def _recovered(self) -> None:
        self.on_back()
        back, self._back = self._back, None
        if self._expiry is not None:
            self._expiry.cancel()
        self.since = None
        self.holding = False
        HELD.labels(self.channel).set(0)
        if back is not None and not back.done():
            HOLDS.labels(self.channel, "back").inc()
            back.set_result(True)  # the waiters go on in the order they started waiting

    def close(self) -> None:
        """Stop probing; whoever still waits is told the hold ended."""
        if self._prober is not None:
            self._prober.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        if self._back is not None and not self._back.done():
            self._back.set_result(False)
        self.holding = False


class RedisHoldSteps:
    """A `ChannelWorker`'s side of the hold: waiting for Redis, probing it, and what happens when it is back."""

    hold: RedisHold
    liveness: Liveness
    dedup: DedupStore
    bucket: TokenBucket
    _interrupted: asyncio.Event

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
