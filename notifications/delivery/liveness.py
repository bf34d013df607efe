"""A worker's liveness keys, refreshed from its event loop, and what they prove about its own dedup claims.

Why: `docs/architecture.md`, "Delivery" (dedup owners, take-over and fencing).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from notifications.delivery.dedup import DedupStore

log = logging.getLogger(__name__)

#: A refresh vouches for this much less than its keys' TTL: Redis starts the TTL when it runs the
#: refresh (after we sent it), and the two clocks may drift a little over a TTL; half a second covers both.
SAFETY = 0.5


class Liveness:
    """Keeps the dedup owner's liveness keys alive (``DedupStore.refresh_liveness``) and answers, right
    before a send, whether its claim can have been taken over meanwhile: only if the keys may have
    lapsed since the claim was made (the process stalled, Redis was away) or a newer incarnation of
    this instance started. Without an owner the store makes claims nobody takes over: always safe."""

    def __init__(
        self, dedup: DedupStore, *, ttl: float, interval: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if dedup.owner is not None and not ttl >= interval + SAFETY + 0.5:
            raise ValueError(f"the liveness TTL ({ttl} s) must exceed the refresh interval ({interval} s) by a second")
        self.dedup = dedup
        self.enabled = dedup.owner is not None
        self.ttl = ttl
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        #: Since when the keys have been alive without a gap (None: not yet, or not known).
        self.alive_since: float | None = None
        #: Until when the last refresh keeps them alive, on our clock, less the safety margin.
        self.valid_until = -math.inf
        self.superseded = False

    def refresh(self) -> bool | None:
        """One refresh (any thread): True when done, False when superseded, None when Redis failed."""
        if not self.enabled:
            return True
        started = self._clock()
        result = self.dedup.refresh_liveness(math.ceil(self.ttl * 1000))
        finished = self._clock()
        if result is None:
            return None
        with self._lock:
            if result is False:
                if not self.superseded:
                    log.error(
                        "a newer process of this worker instance is running: this one's claims are its now",
                        extra={"owner": self.dedup.token},
                    )
                self.superseded = True
                return False
            # The keys this refresh wrote were set by the time it returned; if that was after the
            # last refresh's keys could have expired, there was a gap: claims made before it may
            # have been taken over.
            if self.alive_since is None or finished > self.valid_until:
                self.alive_since = finished
            self.valid_until = max(self.valid_until, started + self.ttl - SAFETY)
        return True

    def vouches_for(self, claimed_at: float | None) -> bool:
        """True when no other worker can have taken over a claim made at `claimed_at` (monotonic):
        the liveness keys have been alive without a gap since then and still are."""
        if not self.enabled:
            return True
        with self._lock:
            return (
                claimed_at is not None
                and not self.superseded
                and self.alive_since is not None
                and claimed_at >= self.alive_since
                and self._clock() < self.valid_until
            )

    async def run(self, executor: Executor, *, after_gap: Callable[[], Awaitable[None]] | None = None) -> None:
        """Refresh every `interval` seconds, scheduled from the event loop (a loop that stalls lets the
        keys lapse, as a dead process does); the Redis call itself runs on `executor`. `after_gap()`
        is awaited when a refresh starts a new span: claims made before it are no longer vouched for."""
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        while True:
            since = self.alive_since
            try:
                await loop.run_in_executor(executor, self.refresh)
                if after_gap is not None and since is not None and self.alive_since != since:
                    await after_gap()
            except Exception:
                log.exception("liveness refresh failed")
            await asyncio.sleep(self.interval)
