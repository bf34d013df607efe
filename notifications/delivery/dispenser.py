"""Hands out a provider's global tokens to the sends waiting inside one worker process.

Without it every waiting send polls Redis on its own: hundreds of coroutines per process wake at
each refill and fire a blocking Redis call each (a thundering herd that burns CPU and adds jitter
between a token's grant and the request reaching the provider, which is what a contract measures).
With it, one poller per (process, provider) asks the global bucket for as many tokens as there are
waiters (`take_many`, one Lua call), serves transactional waiters before bulk ones, and sleeps
exactly the wait the script returns.

With `window_margin` set (provider contracts), every take also carries the sliding-window cap
`Window.for_contract(rate, margin)`: at most R grants in any 1 + margin seconds, so a provider that
enforces exactly R per second never sees more than R in any 1 s window (see the take script).
"""

import asyncio
from collections import deque
from collections.abc import Callable

from notifications.delivery.token_bucket import RateLimiterUnavailable, TokenBucket, Window

PRIORITIES = ("transactional", "bulk")


class TokenDispenser:
    def __init__(
        self,
        *,
        bucket: TokenBucket,
        name: str,
        contract: Callable[[], tuple[float, int, int]],
        window_margin: float | None = None,
    ) -> None:
        """`contract()` returns the provider's current (rate, burst, transactional reserve)."""
        self.bucket = bucket
        self.name = name
        self.contract = contract
        self.window_margin = window_margin
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {p: deque() for p in PRIORITIES}
        self._poller: asyncio.Task[None] | None = None

    async def acquire(self, priority: str = "transactional") -> None:
        """Wait for one token (raises RateLimiterUnavailable when the bucket cannot be reached)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[priority if priority in self._waiters else "transactional"].append(future)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        await future

    async def _poll(self) -> None:
        while any(self._waiters.values()):
            wait = 0.0
            for priority in PRIORITIES:
                queue = self._waiters[priority]
                while queue and queue[0].done():  # cancelled waiters
                    queue.popleft()
                if not queue:
                    continue
                rate, burst, reserve = self.contract()
                window = None if self.window_margin is None else Window.for_contract(rate, self.window_margin)
                try:
                    granted, short_wait = self.bucket.take_many(
                        self.name,
                        rate,
                        burst,
                        n=len(queue),
                        priority=priority,
                        reserve=reserve if priority == "bulk" else None,
                        window=window,
                    )
                except RateLimiterUnavailable as exc:
                    while queue:
                        waiter = queue.popleft()
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                while granted and queue:
                    waiter = queue.popleft()
                    if not waiter.done():
                        waiter.set_result(None)
                        granted -= 1
                if queue:
                    wait = max(wait, short_wait) if wait else short_wait
                if priority == "transactional" and queue:
                    break  # bulk never overtakes waiting transactional sends
            if any(self._waiters.values()):
                await asyncio.sleep(max(wait, 0.001))
