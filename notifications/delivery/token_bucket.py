"""Global token-bucket rate limiter in Redis (server clock only) with priorities and provider holds."""

from __future__ import annotations

import enum
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import redis

from notifications.redis_connect import REDIS_ERRORS

from .circuit_breaker import CircuitBreaker
from .redis_client import register_lua

__all__ = [
    "DEFAULT_BULK_RESERVE_FRACTION",
    "Booking",
    "LocalTokenBucket",
    "Priority",
    "RateLimiterUnavailable",
    "TakeResult",
    "TokenBucket",
]

logger = logging.getLogger(__name__)

DEFAULT_BULK_RESERVE_FRACTION = 0.2
MIN_SLEEP_SECONDS = 0.001
DEFAULT_HOLD_IDLE_TTL_MS = 60_000
#: How far ahead a transactional send may book its slot (bulk: half of it). Long enough that the
#: processes sharing a bucket keep its next slots booked between their calls (so no slot passes
#: unused), short enough that a password reset waits at most 50 ms behind a campaign's bookings.
DEFAULT_BOOKING_HORIZON = 0.1
#: A contract schedule (margin > 0) leaving idle time starts at half the rate and reaches the full
#: rate after this long: the first half second of a spike on an idle fleet has the most jitter
#: (every process busy at once). It costs about 0.15 s x rate sends per idle-to-busy change.
CONTRACT_RAMP_SECONDS = 0.5


class Priority(enum.StrEnum):
    TRANSACTIONAL = "transactional"  # may drain the bucket to 0
    BULK = "bulk"  # must leave `reserve` tokens for transactional traffic


class TakeResult(NamedTuple):
    granted: int
    wait_seconds: float  # 0.0 if all requested tokens were granted, else time until more are available


class Booking(NamedTuple):
    """Send times booked on a provider's schedule (see :meth:`TokenBucket.book`)."""

    offsets: tuple[float, ...]  # seconds after `booked_at` at which each booked slot starts
    wait_seconds: float  # 0.0 if every slot asked for was booked, else the time until more fit
    booked_at: float | None = None  # the script's Redis clock reading (epoch seconds); None: fallback

    @property
    def granted(self) -> int:
        return len(self.offsets)


class RateLimiterUnavailable(Exception):
    """Redis could not be used and no local fallback is configured: the caller must not send now."""


def _resolve_reserve(priority: Priority | str, burst: float, reserve: float | None) -> float:
    if Priority(priority) is Priority.TRANSACTIONAL:
        return 0.0
    if reserve is None:
        return float(math.floor(burst * DEFAULT_BULK_RESERVE_FRACTION))
    return float(reserve)


def _validate(rate: float, burst: float, n: int, reserve: float, *, partial: bool) -> None:
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError("rate must be a positive finite number of tokens per second")
    if not (burst >= 1 and math.isfinite(burst)):
        raise ValueError("burst must be >= 1")
    if not isinstance(n, int) or n < 1:
        raise ValueError("n must be an int >= 1")
    if reserve < 0:
        raise ValueError("reserve must be >= 0")
    need = 1 if partial else n
    if need + reserve > burst:
        raise ValueError(f"can never grant {need} token(s) with reserve {reserve} from a burst of {burst}")


class LocalTokenBucket:
    """Process-local token buckets with the same semantics as the Redis script.

    Used by :class:`TokenBucket` as the degraded-mode fallback (at ``fallback_share`` of the global
    rate) while Redis is unavailable; usable on its own in tests. ``clock`` must be epoch seconds
    because :meth:`hold` takes the provider's absolute reset time.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._state: dict[str, list[float]] = {}  # bucket -> [tokens, ts, blocked_until]

    def take(self, bucket: str, rate: float, burst: float, n: int, reserve: float, *, partial: bool) -> TakeResult:
        with self._lock:
            now = self._clock()
            tokens, ts, blocked_until = self._state.get(bucket, [burst, now, 0.0])
            if now > ts:
                tokens, ts = min(burst, tokens + (now - ts) * rate), now
            tokens = min(tokens, burst)
            need = 1 if partial else n
            granted, wait = 0, 0.0
            if now < blocked_until:
                wait = (blocked_until - now) + max(0.0, reserve + need - tokens) / rate
            else:
                available = tokens - reserve
                if available >= n:
                    granted = n
                elif partial and available >= 1:
                    granted = math.floor(available)
                tokens -= granted
                if granted < n:
                    wait = max(1e-6, (reserve + need - tokens) / rate)
            self._state[bucket] = [tokens, ts, blocked_until]
            return TakeResult(granted, wait)

    def now(self) -> float:
        return self._clock()

    def hold(self, bucket: str, until_epoch_seconds: float) -> float:
        with self._lock:
            now = self._clock()
            _, _, blocked_until = self._state.get(bucket, [0.0, now, 0.0])
            until = max(blocked_until, until_epoch_seconds)
            if until > now:
                self._state[bucket] = [0.0, until, until]
            return until


class TokenBucket:
    """Global token buckets shared by all workers: ``{prefix}tb:{bucket}`` hashes in Redis.

    Every take is one Lua script (``lua/token_bucket_take.lua``) that reads Redis ``TIME`` -- the
    only clock -- refills at ``rate`` tokens/s up to ``burst`` and grants tokens. Rate, burst and
    reserve are passed per call (they come from settings and may change at runtime). Keys expire
    after ``idle_ttl_factor x burst / rate`` seconds idle (at least ``min_idle_ttl_ms``); by then
    the bucket would be full anyway, so expiry loses nothing.

    Priorities: ``transactional`` may take down to 0 tokens. ``bulk`` may only take while at least
    ``reserve`` tokens remain *after* the take (``tokens - n >= reserve``); ``reserve=None``
    defaults to ``floor(0.2 x burst)``.

    RedisError policy (all Redis calls go through ``breaker``):

    * take / take_many / acquire: on any Redis error (``REDIS_ERRORS``) or an open breaker, if
      ``fallback_share`` is set (e.g. ``1 / number_of_workers``) the call is answered by a
      process-local bucket at ``rate x fallback_share`` (burst scaled likewise, min 1) and
      ``on_fallback(1)`` is called -- degraded but still bounded; with ``fallback_share=None``
      :class:`RateLimiterUnavailable` is raised (fail closed: the caller must not send, it should
      retry/park the message).
    * hold / hold_for: a Redis failure is logged, the hold is applied to the local fallback bucket,
      and ``None`` is returned; never raises (the provider keeps answering 429 and backoff copes).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        breaker: CircuitBreaker | None = None,
        fallback_share: float | None = None,
        on_fallback: Callable[[int], None] | None = None,
        idle_ttl_factor: float = 3.0,
        min_idle_ttl_ms: int = 1000,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_sleep_slice: float = 0.5,
        local_bucket: LocalTokenBucket | None = None,
        rng: random.Random | None = None,
        herd_spread: int = 8,
    ) -> None:
        if fallback_share is not None and not 0 < fallback_share <= 1:
            raise ValueError("fallback_share must be in (0, 1]")
        if idle_ttl_factor < 1:
            raise ValueError("idle_ttl_factor must be >= 1 (a key must outlive a full refill)")
        if not 0 < max_sleep_slice <= 0.5:
            raise ValueError("max_sleep_slice must be in (0, 0.5]")
        self.client = client
        self.prefix = prefix
        self.breaker = breaker or CircuitBreaker("redis-ratelimit", failure_threshold=3, cool_down_seconds=5.0)
        self.fallback_share = fallback_share
        self.on_fallback = on_fallback
        self.idle_ttl_factor = idle_ttl_factor
        self.min_idle_ttl_ms = min_idle_ttl_ms
        self._sleep = sleep
        self._clock = clock
        self.max_sleep_slice = max_sleep_slice
        self.local = local_bucket or LocalTokenBucket()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self.herd_spread = herd_spread
        self._take_script = register_lua(client, "token_bucket_take")
        self._book_script = register_lua(client, "token_bucket_book")
        self._hold_script = register_lua(client, "token_bucket_hold")

    def key(self, bucket: str) -> str:
        if not bucket:
            raise ValueError("bucket must be a non-empty string")
        return f"{self.prefix}tb:{bucket}"

    def idle_ttl_ms(self, rate: float, burst: float) -> int:
        return max(self.min_idle_ttl_ms, math.ceil(self.idle_ttl_factor * burst / rate * 1000))

    # -- take ----------------------------------------------------------------------------------

    def take(
        self,
        bucket: str,
        rate: float,
        burst: float,
        n: int = 1,
        priority: Priority | str = Priority.TRANSACTIONAL,
        reserve: float | None = None,
    ) -> TakeResult:
        """All-or-nothing take of ``n`` tokens -> ``(n, 0.0)`` or ``(0, wait_seconds)``.

        ``wait_seconds`` is the earliest time the ``n`` tokens could be available (a lower bound:
        other workers may take them first). RedisError policy: see the class docstring.
        """
        return self._take(bucket, rate, burst, n, priority, reserve, partial=False)

    def take_many(
        self,
        bucket: str,
        rate: float,
        burst: float,
        n: int,
        priority: Priority | str = Priority.TRANSACTIONAL,
        reserve: float | None = None,
    ) -> TakeResult:
        """Take up to ``n`` tokens for a batch in one call -> ``(granted, wait_seconds)``.

        ``granted`` may be anything in ``0..n``; when short, ``wait_seconds`` is the time until the
        next token. RedisError policy: see the class docstring.
        """
        return self._take(bucket, rate, burst, n, priority, reserve, partial=True)

    def _take(
        self,
        bucket: str,
        rate: float,
        burst: float,
        n: int,
        priority: Priority | str,
        reserve: float | None,
        *,
        partial: bool,
    ) -> TakeResult:
        effective_reserve = _resolve_reserve(priority, burst, reserve)
        _validate(rate, burst, n, effective_reserve, partial=partial)
        keys = [self.key(bucket)]
        args = [
            repr(float(rate)),
            repr(float(burst)),
            n,
            repr(effective_reserve),
            "1" if partial else "0",
            self.idle_ttl_ms(rate, burst),
        ]
        if not self.breaker.allow_request():
            return self._fallback_take(bucket, rate, burst, n, effective_reserve, partial, None)
        try:
            granted, wait_us, _tokens_left = self._take_script(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            self.breaker.record_failure()
            return self._fallback_take(bucket, rate, burst, n, effective_reserve, partial, exc)
        self.breaker.record_success()
        return TakeResult(int(granted), int(wait_us) / 1_000_000)

    def _fallback_take(
        self,
        bucket: str,
        rate: float,
        burst: float,
        n: int,
        reserve: float,
        partial: bool,
        exc: Exception | None,
    ) -> TakeResult:
        why = "circuit open" if exc is None else repr(exc)
        if self.fallback_share is None:
            raise RateLimiterUnavailable(f"rate limiter for {bucket!r} unavailable: {why}") from exc
        logger.warning("rate limiter for %r using local fallback: %s", bucket, why)
        if self.on_fallback is not None:
            try:
                self.on_fallback(1)
            except Exception:
                logger.exception("on_fallback callback raised")
        share = self.fallback_share
        local_reserve = reserve * share
        # Scale the bucket down to this process's share, but keep the request satisfiable.
        local_burst = max(1.0, burst * share, (1 if partial else n) + local_reserve)
        return self.local.take(bucket, rate * share, local_burst, n, local_reserve, partial=partial)

    # -- book ----------------------------------------------------------------------------------

    def book(
        self,
        bucket: str,
        rate: float,
        burst: float,
        n: int,
        priority: Priority | str = Priority.TRANSACTIONAL,
        reserve: float | None = None,
        *,
        margin: float = 0.0,
        horizon: float = DEFAULT_BOOKING_HORIZON,
        min_n: int = 1,
    ) -> Booking:
        """Book up to ``n`` send times on the bucket's schedule (GCRA, ``lua/token_bucket_book.lua``).

        Slots are ``(1 + margin) / rate`` seconds apart, with ``burst`` slots at once after idle
        time. ``margin`` is for a provider that enforces exactly its rate in every 1 s window: the
        schedule then leaves room for the jitter between a slot and the request's arrival there,
        has no burst, and after idle time (or a hold) starts at half the rate, reaching the full
        rate after ``CONTRACT_RAMP_SECONDS``.
        A transactional booking may reach ``horizon`` seconds ahead; bulk only half as far, so a
        transactional send waits at most ``horizon / 2`` behind a campaign's bookings, and bulk never
        uses the last ``reserve`` slots of the burst (as in :meth:`take`). Nothing is booked unless
        ``min_n`` slots fit (fewer calls when many processes wait on one bucket).

        The schedule keeps its own state in the bucket's hash (field ``tat``) and honours
        :meth:`hold`; it is not shared with :meth:`take`, so one bucket is used either by bookings
        or by takes. RedisError policy: as for :meth:`take`; the local fallback answers with slots
        that start at once.
        """
        effective_reserve = _resolve_reserve(priority, burst, reserve)
        _validate(rate, burst, n, effective_reserve, partial=True)
        if not (0 <= margin < 1):
            raise ValueError("margin must be in [0, 1)")
        if not horizon > 0:
            raise ValueError("horizon must be > 0 seconds")
        interval_us = (1.0 + margin) * 1_000_000 / rate
        # A provider that counts every 1 s window (margin > 0) has no room for a burst: its B - 1
        # extra requests would take the place of the jitter the margin is there for.
        tolerance_us = (burst - 1) * interval_us if margin == 0 else 0.0
        if Priority(priority) is Priority.BULK:
            # Half the horizon, and never the reserve's share of the burst tolerance (a contract
            # schedule has none): bulk keeps its pace, transactional sends wait at most horizon / 2.
            horizon_us = horizon * 1_000_000 / 2 - min(effective_reserve * interval_us, tolerance_us)
        else:
            horizon_us = horizon * 1_000_000
        args = [
            repr(interval_us),
            repr(tolerance_us),
            n,
            max(1, min(min_n, n)),
            repr(horizon_us),
            self.idle_ttl_ms(rate, burst),
            math.ceil((CONTRACT_RAMP_SECONDS if margin > 0 else 0.0) * 1_000_000),
        ]
        if not self.breaker.allow_request():
            return self._fallback_booking(bucket, rate, burst, n, effective_reserve, None)
        try:
            reply = self._book_script(keys=[self.key(bucket)], args=args)
        except REDIS_ERRORS as exc:
            self.breaker.record_failure()
            return self._fallback_booking(bucket, rate, burst, n, effective_reserve, exc)
        self.breaker.record_success()
        granted, wait_us, now_us = int(reply[0]), int(reply[1]), int(reply[2])
        offsets = tuple(int(us) / 1_000_000 for us in reply[3 : 3 + granted])
        return Booking(offsets, wait_us / 1_000_000, now_us / 1_000_000)

    def _fallback_booking(
        self, bucket: str, rate: float, burst: float, n: int, reserve: float, exc: Exception | None
    ) -> Booking:
        granted, wait = self._fallback_take(bucket, rate, burst, n, reserve, True, exc)
        return Booking((0.0,) * granted, wait)

    # -- hold ----------------------------------------------------------------------------------

    def hold(
        self, bucket: str, until_epoch_seconds: float, rate: float | None = None, burst: float | None = None
    ) -> float | None:
        """Drain ``bucket`` and block all takes until ``until_epoch_seconds`` (provider reset time).

        Use for SendGrid ``X-RateLimit-Reset`` (epoch seconds). Never shortens a longer existing
        hold; after the hold the bucket refills from 0 at ``rate``. ``rate``/``burst`` (optional) only
        size the key's idle expiry after the hold (default 60 s, so the ramp-up from 0 survives).
        Returns the effective hold end (epoch seconds), or None if Redis failed (then the hold is
        applied to the local fallback bucket only; never raises).
        """
        return self._hold(bucket, "until", until_epoch_seconds, rate, burst)

    def hold_for(
        self, bucket: str, seconds: float, rate: float | None = None, burst: float | None = None
    ) -> float | None:
        """Like :meth:`hold` for a relative ``Retry-After`` (seconds from now on the Redis clock)."""
        return self._hold(bucket, "for", seconds, rate, burst)

    def _hold(self, bucket: str, mode: str, seconds: float, rate: float | None, burst: float | None) -> float | None:
        if not math.isfinite(seconds):
            raise ValueError("hold time must be finite")
        key = self.key(bucket)
        idle_ttl = self.idle_ttl_ms(rate, burst) if rate and burst else DEFAULT_HOLD_IDLE_TTL_MS
        if self.breaker.allow_request():
            try:
                until_us = self._hold_script(keys=[key], args=[mode, repr(float(seconds)), idle_ttl])
            except REDIS_ERRORS as exc:
                self.breaker.record_failure()
                logger.warning("rate limiter hold for %r not stored in Redis: %r", bucket, exc)
            else:
                self.breaker.record_success()
                return int(until_us) / 1_000_000
        until = seconds if mode == "until" else self.local.now() + seconds
        self.local.hold(bucket, until)
        return None

    # -- acquire -------------------------------------------------------------------------------

    def acquire(
        self,
        bucket: str,
        rate: float,
        burst: float,
        n: int = 1,
        priority: Priority | str = Priority.TRANSACTIONAL,
        reserve: float | None = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        stop_event: threading.Event | None = None,
        partial: bool = False,
    ) -> int:
        """Block until tokens are granted; returns the number granted (0 on deadline or stop).

        Loops take -> sleep(wait) and never spins: it always sleeps the returned wait (at least
        1 ms), in slices of at most ``max_sleep_slice`` (<= 0.5 s), checking ``stop_event`` between
        slices. Thundering-herd damping: after the k-th consecutive miss (k >= 2) it sleeps an extra
        ``uniform(0, wait x min(2**(k-1) - 1, herd_spread))``, so N waiters on one bucket do not all poll
        Redis at ``rate`` each. ``deadline`` is on the injected ``clock`` (monotonic by default);
        ``timeout`` is relative. Gives up early, without sleeping, once the returned wait would end past the
        deadline. With ``partial=True`` uses :meth:`take_many` and returns as soon as >= 1 token
        is granted. RedisError policy: as for :meth:`take` (fallback or RateLimiterUnavailable).
        """
        end = deadline
        if timeout is not None:
            by_timeout = self._clock() + timeout
            end = by_timeout if end is None else min(end, by_timeout)
        take = self.take_many if partial else self.take
        misses = 0
        while True:
            if stop_event is not None and stop_event.is_set():
                return 0
            granted, wait = take(bucket, rate, burst, n, priority, reserve)
            if granted:
                return granted
            misses += 1
            wait = max(wait, MIN_SLEEP_SECONDS)
            if end is not None:
                left = end - self._clock()
                if wait > left:
                    return 0
            if misses > 1 and self.herd_spread > 0:
                wait += self._rng.uniform(0.0, wait * min(2.0 ** (misses - 1) - 1, self.herd_spread))
                if end is not None:
                    wait = min(wait, left)
            if not self._sleep_sliced(wait, stop_event):
                return 0

    def _sleep_sliced(self, seconds: float, stop_event: threading.Event | None) -> bool:
        """Sleep ``seconds`` in slices; False if ``stop_event`` got set."""
        remaining = seconds
        while remaining > 0:
            chunk = min(remaining, self.max_sleep_slice)
            self._sleep(chunk)
            remaining -= chunk
            if stop_event is not None and stop_event.is_set():
                return False
        return True
