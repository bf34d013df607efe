"""A channel's providers as its worker uses them: contract, circuit breaker, in-flight limit, failover order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from notifications.delivery.circuit_breaker import CircuitBreaker
from notifications.models import Provider
from notifications.outages import dependency_of
from notifications.providers.base import ProviderAdapter
from notifications.providers.capacity import channel_capacity
from notifications.providers.registry import adapter_for

log = logging.getLogger(__name__)

#: How often the Provider table is re-read (admin edits go live without a restart).
PROVIDER_REFRESH_SECONDS = 5.0


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
    _in_flight: InFlightLimit | None = None

    @property
    def adapter(self) -> ProviderAdapter:
        """Built on first use inside the worker's event loop (adapters own loop-bound HTTP pools)."""
        if self._adapter is None:
            assert self.adapter_factory is not None  # noqa: S101 - narrows the type; the worker always sets it
            self._adapter = self.adapter_factory(self.kind)
        return self._adapter

    @property
    def in_flight(self) -> InFlightLimit | None:
        """The adapter's `max_in_flight` as a limit on this worker's sends (None: unbounded)."""
        if self._in_flight is None and self.adapter.max_in_flight:
            self._in_flight = InFlightLimit(self.adapter.max_in_flight)
        return self._in_flight


class InFlightLimit:
    """At most `limit` provider requests in flight (a push to k devices takes k), first come first served.

    Sends beyond what a provider connection carries at once wait here, before their send starts:
    not under the adapter's send deadline (a deadline that expires on a request the provider already
    accepted makes the retry a duplicate), not holding a worker concurrency slot (a slow provider
    cannot take the slots of the others) and not holding a rate-limit token.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, requests: int) -> int:
        """Wait until `requests` (at most `limit`) fit; returns what to `release`."""
        n = max(1, min(requests, self.limit))
        if not self._waiters and self.used + n <= self.limit:
            self.used += n
            return n
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(n)  # granted, then cancelled before it resumed: give it back
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return n

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            n, waiter = self._waiters.popleft()
            self.used += n
            waiter.set_result(None)


class ProviderTable:
    """The channel's providers in failover order, re-read every few seconds (admin edits go live).

    Adapters and circuit breakers survive a refresh, so a breaker's state is not lost."""

    def __init__(self, channel: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.channel = channel
        self._clock = clock
        self._slots: dict[str, ProviderSlot] = {}
        self._order: list[ProviderSlot] = []
        self._loaded_at = float("-inf")

    def __call__(self) -> list[ProviderSlot]:
        return self._order

    def capacity(self) -> float | None:
        """The channel's contract rate as its enabled providers allow it (`channel_capacity`)."""
        return channel_capacity(self.channel, [(slot.kind, slot.rate) for slot in self._order if slot.enabled])

    def refresh_if_due(self) -> None:
        """Re-read the table (sync: called by the worker outside its event loop)."""
        if self._clock() - self._loaded_at < PROVIDER_REFRESH_SECONDS:
            return
        try:
            self.refresh()
        except Exception as exc:
            if dependency_of(exc) != "postgresql" or not self._order:
                raise
            # The database is away: keep sending with the table read last (retried at the next refresh).
            self._loaded_at = self._clock()
            log.warning("provider table not refreshed", extra={"channel": self.channel, "error": str(exc)[:200]})

    def refresh(self) -> None:
        order = []
        for row in Provider.objects.filter(channel=self.channel).order_by("priority", "name"):
            slot = self._slots.get(row.name)
            if slot is None:
                slot = ProviderSlot(
                    name=row.name,
                    kind=row.kind,
                    adapter_factory=adapter_for,
                    rate=row.rate,
                    burst=row.burst,
                    reserve=row.transactional_reserve,
                    breaker=CircuitBreaker(
                        f"provider:{row.name}",
                        failure_threshold=settings.PROVIDER_BREAKER_FAILURES,
                        cool_down_seconds=settings.PROVIDER_BREAKER_COOL_DOWN,
                    ),
                )
                self._slots[row.name] = slot
            slot.rate, slot.burst, slot.reserve = row.rate, row.burst, row.transactional_reserve
            slot.enabled = row.enabled  # kill switches are the worker's own check (kill_switches.py)
            order.append(slot)
        self._order = order
        self._loaded_at = self._clock()
