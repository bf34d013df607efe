"""In-process circuit breaker (closed -> open -> half-open -> closed) with an injectable clock."""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["BreakerState", "CircuitBreaker", "CircuitOpenError"]

P = ParamSpec("P")
T = TypeVar("T")


class BreakerState(enum.StrEnum):
    """Circuit states; the value is what a Prometheus label / log line should show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(Exception):
    """Raised by :meth:`CircuitBreaker.call` when the circuit rejects the call without running it."""

    def __init__(self, name: str, retry_in: float) -> None:
        super().__init__(f"circuit {name!r} is open (next probe in {retry_in:.3f}s)")
        self.name = name
        self.retry_in = retry_in


class CircuitBreaker:
    """A thread-safe, process-local circuit breaker.

    Trips (CLOSED -> OPEN) when either

    * ``failure_threshold`` consecutive failures are recorded, or
    * within the sliding ``window_seconds`` at least ``min_calls`` outcomes were recorded and the
      failure ratio is >= ``failure_rate_threshold``.

    After ``cool_down_seconds`` an OPEN circuit becomes HALF_OPEN and lets at most
    ``half_open_max_calls`` probe calls through at a time. A probe success closes the circuit
    (and clears the window); a probe failure re-opens it for another cool-down. A probe that never
    reports back (caller crashed/forgot) stops blocking further probes after another cool-down.

    Usage is either ``breaker.call(fn, *args)`` or the explicit protocol::

        if breaker.allow_request():
            try:
                result = do_io()
            except SomeError:
                breaker.record_failure()
                raise
            breaker.record_success()

    This is the in-process variant only (no Redis-shared state): each worker process learns about a
    broken dependency on its own after ``failure_threshold`` failures, which is cheap and has no
    dependency on the very Redis it may be protecting.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        failure_rate_threshold: float = 0.5,
        window_seconds: float = 30.0,
        min_calls: int = 20,
        cool_down_seconds: float = 10.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[str, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if not 0.0 < failure_rate_threshold <= 1.0:
            raise ValueError("failure_rate_threshold must be in (0, 1]")
        if window_seconds <= 0 or cool_down_seconds < 0:
            raise ValueError("window_seconds must be > 0 and cool_down_seconds >= 0")
        if min_calls < 1 or half_open_max_calls < 1:
            raise ValueError("min_calls and half_open_max_calls must be >= 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.failure_rate_threshold = failure_rate_threshold
        self.window_seconds = window_seconds
        self.min_calls = min_calls
        self.cool_down_seconds = cool_down_seconds
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._on_state_change = on_state_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._window: deque[tuple[float, bool]] = deque()  # (timestamp, failed)
        self._window_failures = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0
        self._last_probe_at = 0.0

    # -- introspection -------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """Current state (an OPEN circuit whose cool-down elapsed reports HALF_OPEN)."""
        with self._lock:
            changed = self._maybe_half_open(self._clock())
            state = self._state
        self._notify(changed)
        return state

    def retry_in(self) -> float:
        """Seconds until an OPEN circuit admits a probe (0 when a call would be allowed now)."""
        with self._lock:
            if self._state is BreakerState.OPEN:
                return max(0.0, self._opened_at + self.cool_down_seconds - self._clock())
            return 0.0

    # -- protocol ------------------------------------------------------------------------------

    def allow_request(self) -> bool:
        """Return True if the caller may perform the protected call now.

        In HALF_OPEN a True answer reserves a probe slot; the caller MUST then report the outcome with
        :meth:`record_success` or :meth:`record_failure`.
        """
        with self._lock:
            now = self._clock()
            changed = self._maybe_half_open(now)
            if self._state is BreakerState.CLOSED:
                allowed = True
            elif self._state is BreakerState.OPEN:
                allowed = False
            else:
                if self._probes_in_flight >= self.half_open_max_calls and now - self._last_probe_at >= max(
                    self.cool_down_seconds, 1e-9
                ):
                    # Probes that never reported back must not wedge the circuit forever.
                    self._probes_in_flight = 0
                allowed = self._probes_in_flight < self.half_open_max_calls
                if allowed:
                    self._probes_in_flight += 1
                    self._last_probe_at = now
        self._notify(changed)
        return allowed

    def record_success(self) -> None:
        """Report a successful protected call."""
        with self._lock:
            now = self._clock()
            changed = self._maybe_half_open(now)
            self._consecutive_failures = 0
            if self._state is BreakerState.HALF_OPEN:
                changed = self._transition(BreakerState.CLOSED, now) or changed
            elif self._state is BreakerState.CLOSED:
                self._push(now, failed=False)
        self._notify(changed)

    def record_failure(self) -> None:
        """Report a failed protected call (only failures of the dependency, not e.g. 4xx validation)."""
        with self._lock:
            now = self._clock()
            changed = self._maybe_half_open(now)
            self._consecutive_failures += 1
            if self._state is BreakerState.HALF_OPEN:
                changed = self._transition(BreakerState.OPEN, now) or changed
            elif self._state is BreakerState.CLOSED:
                self._push(now, failed=True)
                total = len(self._window)
                if self._consecutive_failures >= self.failure_threshold or (
                    total >= self.min_calls and self._window_failures / total >= self.failure_rate_threshold
                ):
                    changed = self._transition(BreakerState.OPEN, now) or changed
            # OPEN: late reports from calls admitted before the trip change nothing.
        self._notify(changed)

    def call(
        self,
        fn: Callable[P, T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn`` through the breaker; any ``Exception`` counts as a failure and is re-raised.

        Raises :class:`CircuitOpenError` without calling ``fn`` when the circuit rejects the call.
        Use the explicit protocol when only some exception types should count as failures.
        """
        if not self.allow_request():
            raise CircuitOpenError(self.name, self.retry_in())
        try:
            result = fn(*args, **kwargs)
        except Exception:
            self.record_failure()
            raise
        self.record_success()
        return result

    def reset(self) -> None:
        """Force the circuit CLOSED and forget all history (admin / tests)."""
        with self._lock:
            changed = self._transition(BreakerState.CLOSED, self._clock())
        self._notify(changed)

    # -- internals (call with the lock held) ---------------------------------------------------

    def _push(self, now: float, *, failed: bool) -> None:
        self._window.append((now, failed))
        self._window_failures += failed
        horizon = now - self.window_seconds
        while self._window and self._window[0][0] <= horizon:
            _, old_failed = self._window.popleft()
            self._window_failures -= old_failed

    def _maybe_half_open(self, now: float) -> tuple[BreakerState, BreakerState] | None:
        if self._state is BreakerState.OPEN and now - self._opened_at >= self.cool_down_seconds:
            return self._transition(BreakerState.HALF_OPEN, now)
        return None

    def _transition(self, new: BreakerState, now: float) -> tuple[BreakerState, BreakerState] | None:
        old = self._state
        self._state = new
        self._probes_in_flight = 0
        if new is BreakerState.OPEN:
            self._opened_at = now
        elif new is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._window.clear()
            self._window_failures = 0
        return (old, new) if old is not new else None

    def _notify(self, changed: tuple[BreakerState, BreakerState] | None) -> None:
        # Called outside the lock so a callback may inspect the breaker.
        if changed is not None and self._on_state_change is not None:
            self._on_state_change(self.name, *changed)
