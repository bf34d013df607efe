"""Hands out a provider's global send slots to the sends waiting inside one worker process: one
poller per (process, provider) books slots for all of them, urgent first, then transactional, then
bulk. See docs/architecture.md, "Delivery" (Token bucket)."""

import asyncio
import random
from collections import deque
from collections.abc import Callable

from prometheus_client import Counter

from notifications.delivery.token_bucket import DEFAULT_BOOKING_HORIZON, RateLimiterUnavailable, TokenBucket

#: Waiter queues in the order they are served; urgent books as transactional in the bucket.
PRIORITIES = ("urgent", "transactional", "bulk")
#: Slots booked per call at most (a worker has at most WORKER_CONCURRENCY sends waiting).
MAX_BOOKING = 256
#: A call books at least this many seconds' worth of slots: 10 at 500/s. Fewer calls when many
#: processes share one bucket, and still far inside the 50 ms that bulk may book ahead.
MIN_BOOKING_SECONDS = 0.02
#: Calls whose round trips are compared for the clock offset (a few seconds' worth at 500/s).
CLOCK_SAMPLES = 64
#: A slot due within this long starts at once rather than through a timer: a timer per send costs
#: a worker at thousands of sends a second about a sixth of its throughput, and half a millisecond
#: early is far inside the margin's jitter budget (20 ms).
EARLY_START = 0.0005
#: Slots a send may give up in a row for starting late before it goes regardless.
MAX_FORFEITS = 5
#: What a bulk waiter is woken with when a higher class took its booked slot: book again.
_TAKEN = -1.0

SLOTS_FORFEITED = Counter(
    "token_slots_forfeited_total",
    "Booked send slots given up because the send would have started too late after its slot",
    ["bucket"],
)


class TokenDispenser:
    def __init__(
        self,
        *,
        bucket: TokenBucket,
        name: str,
        contract: Callable[[], tuple[float, int, int]],
        window_margin: float | None = None,
        booking: bool = True,
        horizon: float = DEFAULT_BOOKING_HORIZON,
        max_lateness: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`contract()` returns the provider's current (rate, burst, transactional reserve)."""
        self.bucket = bucket
        self.name = name
        self.contract = contract
        self.window_margin = window_margin
        self.booking = booking
        self.horizon = horizon
        self.max_lateness = max_lateness
        self.forfeited = 0
        self._held_until = 0.0  # event-loop time until which the provider asked us to wait
        # (round trip, Redis clock - event-loop clock) of the last calls; see _local_time_of.
        self._clock_samples: deque[tuple[float, float]] = deque(maxlen=CLOCK_SAMPLES)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._waiters: dict[str, deque[asyncio.Future[float]]] = {p: deque() for p in PRIORITIES}
        self._poller: asyncio.Task[None] | None = None
        self._sleep: asyncio.Future[None] | None = None  # the poller's sleep; ended early for a higher class
        #: Bulk waiters whose booked slot has not started yet: waiter → (due, timer).
        self._booked_bulk: dict[asyncio.Future[float], tuple[float, asyncio.TimerHandle]] = {}

    async def acquire(self, priority: str = "transactional") -> None:
        """Wait for one slot (raises RateLimiterUnavailable when the bucket cannot be reached)."""
        loop = asyncio.get_running_loop()
        priority = priority if priority in self._waiters else "transactional"
        queue = self._waiters[priority]
        forfeits = 0
        again = False
        while True:
            future: asyncio.Future[float] = loop.create_future()
            if priority != "bulk" and self._take_bulk_slot(loop, future):
                pass
            # A send that gave its slot up books again ahead of the sends that never had one.
            elif forfeits or again:
                queue.appendleft(future)
            else:
                queue.append(future)
                if priority != "bulk" and self._sleep is not None and not self._sleep.done():
                    self._sleep.set_result(None)  # the poller slept until bulk slots fit: book now
            if not future.done() and (self._poller is None or self._poller.done()):
                self._poller = asyncio.create_task(self._poll())
            due = await future
            if due == _TAKEN:  # a higher class took the slot this bulk send had booked
                again = True
                continue
            again = False
            if due < self._held_until:
                # Booked before the provider's 429: the schedule in Redis has moved past the hold.
                forfeits += 1
                continue
            if self.max_lateness is None or loop.time() - due <= self.max_lateness or forfeits >= MAX_FORFEITS:
                return
            forfeits += 1
            self.forfeited += 1
            SLOTS_FORFEITED.labels(self.name).inc()

    def _take_bulk_slot(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[float]) -> bool:
        """Give `future` the earliest slot booked by a bulk waiter of this process (which then books
        again); False when there is none."""
        if not self._booked_bulk:
            return False
        waiter, (due, timer) = min(self._booked_bulk.items(), key=lambda item: item[1][0])
        del self._booked_bulk[waiter]
        timer.cancel()
        if not waiter.done():
            waiter.set_result(_TAKEN)
        self._schedule(loop, future, due)
        return True

    def _schedule(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[float], due: float) -> None:
        """Wake `waiter` at its slot (at once when the slot is due within EARLY_START)."""
        if due - loop.time() <= EARLY_START:
            waiter.set_result(due)
        else:
            loop.call_at(due, _wake, waiter, due)

    def _wake_bulk(self, waiter: asyncio.Future[float], due: float) -> None:
        self._booked_bulk.pop(waiter, None)
        _wake(waiter, due)

    def hold(self, seconds: float) -> None:
        """The provider answered 429 with a Retry-After (and the bucket's hold is stored in Redis):
        sends woken at slots booked before the hold's end book again instead of going out into it."""
        # 10 ms less: a slot booked right at the hold's end (Redis clock) must not book again.
        self._held_until = max(self._held_until, asyncio.get_running_loop().time() + seconds - 0.01)

    def _local_time_of(self, redis_time: float | None, asked_at: float, answered_at: float) -> float:
        """The event-loop time at which the script read `redis_time` (its clock).

        It lies between sending the call and reading the answer; a call whose answer was read late
        (the process was not scheduled) says little. So, as NTP does, the offset between the two
        clocks comes from the fastest of the last calls, where that uncertainty was smallest.
        """
        midpoint = (asked_at + answered_at) / 2
        if redis_time is None:  # the local fallback answered
            return midpoint
        self._clock_samples.append((answered_at - asked_at, redis_time - midpoint))
        return redis_time - min(self._clock_samples)[1]

    def min_booking(self, rate: float) -> int:
        return max(1, int(MIN_BOOKING_SECONDS * rate / (1.0 + (self.window_margin or 0.0))))

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while any(self._waiters.values()):
            wait = 0.0
            for priority in PRIORITIES:
                queue = self._waiters[priority]
                while queue and queue[0].done():  # cancelled waiters
                    queue.popleft()
                if not queue:
                    continue
                rate, burst, reserve = self.contract()
                try:
                    if self.booking:
                        short_wait = self._book(loop, queue, priority, rate, burst, reserve)
                    else:
                        short_wait = self._take(queue, priority, rate, burst, reserve)
                except Exception as exc:
                    # Unavailable: the waiters park their messages. Anything else (a contract the
                    # bucket refuses, a bug) fails them too, so the worker dies loudly rather than
                    # leaving sends waiting forever on a poller that is gone.
                    while queue:
                        waiter = queue.popleft()
                        if not waiter.done():
                            waiter.set_exception(exc)
                    if isinstance(exc, RateLimiterUnavailable):
                        continue
                    raise
                if queue:
                    wait = max(wait, short_wait) if wait else short_wait
                if priority != "bulk" and queue:
                    break  # a lower class never overtakes waiting sends of a higher one
            if any(self._waiters.values()):
                self._sleep = loop.create_future()
                timer = loop.call_later(max(wait, 0.001), _wake, self._sleep, None)
                try:
                    await self._sleep
                finally:
                    timer.cancel()
                    self._sleep = None

    def _book(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: deque[asyncio.Future[float]],
        priority: str,
        rate: float,
        burst: int,
        reserve: int,
    ) -> float:
        n = min(len(queue), MAX_BOOKING)
        min_n = self.min_booking(rate)
        asked_at = loop.time()
        booking = self.bucket.book(
            self.name,
            rate,
            burst,
            n,
            priority=_bucket_priority(priority),
            reserve=reserve if priority == "bulk" else None,
            margin=self.window_margin or 0.0,
            horizon=self.horizon,
            min_n=min_n,
        )
        base = self._local_time_of(booking.booked_at, asked_at, loop.time())
        for offset in booking.offsets:
            while queue and queue[0].done():
                queue.popleft()
            if not queue:
                break  # every waiter left (revoke, stop): the slot passes unused, never early
            waiter = queue.popleft()
            due = base + offset
            if priority == "bulk" and due - loop.time() > EARLY_START:
                self._booked_bulk[waiter] = (due, loop.call_at(due, self._wake_bulk, waiter, due))
            else:
                self._schedule(loop, waiter, due)
        if not booking.wait_seconds:
            return 0.0
        if booking.granted:
            return booking.wait_seconds  # back exactly when the next slots fit: none goes unused
        # Refused: other processes took the slots, and they were all told the same instant. Spread
        # the next calls over one booking's worth of slots, never more than the wait itself.
        spread = min_n * (1.0 + (self.window_margin or 0.0)) / rate
        return booking.wait_seconds + self._rng.uniform(0.0, min(spread, booking.wait_seconds))

    def _take(self, queue: deque[asyncio.Future[float]], priority: str, rate: float, burst: int, reserve: int) -> float:
        granted, short_wait = self.bucket.take_many(
            self.name,
            rate,
            burst,
            n=len(queue),
            priority=_bucket_priority(priority),
            reserve=reserve if priority == "bulk" else None,
        )
        while granted and queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(asyncio.get_running_loop().time())
                granted -= 1
        return short_wait


def _bucket_priority(priority: str) -> str:
    """The bucket knows two priorities: bulk, and everything else (which may use the reserve)."""
    return "bulk" if priority == "bulk" else "transactional"


def _wake(waiter: asyncio.Future, due: float | None) -> None:
    if not waiter.done():
        waiter.set_result(due)
