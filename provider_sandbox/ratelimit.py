"""Exact sliding-window rate limiter enforcing a provider's contract rate: a request is admitted only if
fewer than ``capacity`` were admitted in ``(now - capacity / rate, now]``. With the default capacity
(``ceil(rate)``) no 1-second interval holds more than ``rate`` requests, as ``/_sandbox/stats``
``max_window`` measures with the same timestamps; ``burst`` sets the capacity."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LimitSnapshot:
    """Current limiter state, for ``X-RateLimit-*`` style headers."""

    limit: int | None
    remaining: int | None
    reset_after: float  # seconds until one slot frees up (0 if a slot is free now)


class SlidingWindowLimiter:
    """At most ``capacity`` admissions in any window of ``capacity / rate`` seconds."""

    def __init__(self, rate: float | None = None, burst: int | None = None) -> None:
        self._admitted: deque[float] = deque()
        self.rate: float | None = None
        self.capacity: int = 0
        self.window: float = 0.0
        self.configure(rate, burst)

    def configure(self, rate: float | None, burst: int | None = None) -> None:
        """Change the contract; the admission history is cleared."""
        if rate is not None and rate <= 0:
            rate = None
        self.rate = rate
        if rate is None:
            self.capacity, self.window = 0, 0.0
        else:
            self.capacity = int(burst) if burst else max(1, math.ceil(rate))
            self.window = self.capacity / rate
        self._admitted = deque(maxlen=self.capacity or None)

    @property
    def unlimited(self) -> bool:
        return self.rate is None

    def reset(self) -> None:
        self._admitted.clear()

    def _expire(self, now: float) -> None:
        admitted, window = self._admitted, self.window
        # ``now - t >= window`` (not ``t <= now - window``): the subtraction of two close floats is
        # exact, so the limiter and the stats window computation agree bit for bit.
        while admitted and now - admitted[0] >= window:
            admitted.popleft()

    def try_acquire(self, now: float | None = None) -> float | None:
        """Admit one request at ``now`` (monotonic seconds).

        Returns ``None`` when admitted, otherwise the number of seconds after which a retry would be
        admitted (always > 0).
        """
        if self.rate is None:
            return None
        if now is None:
            now = time.monotonic()
        self._expire(now)
        if len(self._admitted) < self.capacity:
            self._admitted.append(now)
            return None
        return max(self.window - (now - self._admitted[0]), 1e-6)

    def snapshot(self, now: float | None = None) -> LimitSnapshot:
        if self.rate is None:
            return LimitSnapshot(limit=None, remaining=None, reset_after=0.0)
        if now is None:
            now = time.monotonic()
        self._expire(now)
        remaining = self.capacity - len(self._admitted)
        reset_after = 0.0 if not self._admitted else self.window - (now - self._admitted[0])
        return LimitSnapshot(limit=self.capacity, remaining=remaining, reset_after=max(reset_after, 0.0))

    def to_dict(self) -> dict[str, float | int | None]:
        return {"rate": self.rate, "capacity": self.capacity or None, "window_s": self.window or None}
