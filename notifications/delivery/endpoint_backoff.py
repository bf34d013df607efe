"""Per-endpoint pauses in Redis: one webhook endpoint's back-pressure holds back that endpoint only.

How and why: `docs/architecture.md`, "Webhooks" (per-endpoint back-pressure).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from prometheus_client import Counter

from notifications.delivery.circuit_breaker import CircuitBreaker
from notifications.redis_connect import REDIS_ERRORS
from notifications.redis_keys import hash_tag, require_untagged

log = logging.getLogger(__name__)

PAUSES = Counter("endpoint_pauses_total", "Endpoints paused, by why", ["reason"])
REDIS_FAILURES = Counter(
    "endpoint_backoff_redis_errors_total", "Endpoint pause reads/writes that Redis did not answer (fail open)"
)

#: KEYS[1] the endpoint's pause key (its remaining PTTL is the pause); ARGV[1] the pause in ms.
#: The longer pause wins: a short Retry-After never cuts a pause another worker set.
PAUSE_LUA = """
local left = redis.call('PTTL', KEYS[1])
local want = tonumber(ARGV[1])
if left < want then
  redis.call('SET', KEYS[1], '1', 'PX', want)
  return want
end
return left
"""

#: KEYS[1] the pause key, KEYS[2] the endpoint's failure run (a hash: failures `n`, pauses `k`);
#: ARGV: threshold, first pause ms, max pause ms, how long the run is remembered (ms). Returns the
#: pause started (ms), 0 below the threshold, minus the pause left when one is already in force.
FAILURE_LUA = """
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  -- a send started before the pause failed: the pause already covers it
  return -left
end
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if n < tonumber(ARGV[1]) then
  return 0
end
-- each pause of the same run (no success in between) is twice the last, up to the cap
local k = redis.call('HINCRBY', KEYS[2], 'k', 1)
local want = math.floor(math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ math.min(k - 1, 30)))
redis.call('SET', KEYS[1], '1', 'PX', want)
return want
"""

#: Local knowledge of this many endpoints at most; past it, entries nobody trusts any more are dropped.
MAX_KNOWN = 10_000


@dataclass(frozen=True)
class EndpointBackoffConfig:
    #: Transient failures (5xx, timeouts) in a row, with no success between, that pause the endpoint.
    failure_threshold: int = 5
    #: The first failure pause (seconds); each further failure in the run doubles it.
    failure_pause: float = 5.0
    #: No pause is longer, whatever Retry-After said (a receiver's typo must not park it for days).
    max_pause: float = 3600.0
    #: How long a "not paused" answer from Redis is trusted before asking again (seconds): a pause
    #: set by another worker is seen within this, and Redis is asked once per endpoint per interval.
    recheck: float = 0.5


class EndpointBackoff:
    """Pauses keyed by an endpoint scope (a string; `WebhookAdapter.backpressure_scope`), shared by
    every worker through Redis (``{prefix}ep:{<digest>}:pause`` and ``…:fails``, one hash tag per
    endpoint so the failure script touches one cluster slot).

    Redis policy: fail open. A pause Redis cannot store or report is kept in this process only; the
    worst case is a request to an endpoint still busy, which answers 429 again. A circuit breaker
    skips Redis while it is away, so its timeouts are paid a few times, not once per message (these
    calls run in the worker's event loop).
    """

    def __init__(
        self,
        client: redis.Redis | None,
        prefix: str,
        *,
        config: EndpointBackoffConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.client = client
        self.breaker = breaker or CircuitBreaker("redis-endpoints", failure_threshold=3, cool_down_seconds=5.0)
        self.prefix = require_untagged(prefix, "the Redis key prefix")
        self.config = config or EndpointBackoffConfig()
        self.clock = clock
        self._pause_script = client.register_script(PAUSE_LUA) if client is not None else None
        self._failure_script = client.register_script(FAILURE_LUA) if client is not None else None
        #: scope -> (resumes at, trusted until), both on `clock`
        self._known: dict[str, tuple[float, float]] = {}
        #: scope -> when a success next resets its failure run in Redis (at most once per `recheck`)
        self._reset_due: dict[str, float] = {}

    def keys(self, scope: str) -> tuple[str, str]:
        tag = hash_tag(hashlib.sha1(scope.encode(), usedforsecurity=False).hexdigest()[:16])
        return f"{self.prefix}ep:{tag}:pause", f"{self.prefix}ep:{tag}:fails"

    def wait(self, scope: str) -> float:
        """Seconds until `scope` may be sent to again (0: now)."""
        now = self.clock()
        known = self._known.get(scope)
        if known is not None and now < known[1]:
            return max(0.0, known[0] - now)
        left_ms = 0
        if self._redis_usable():
            try:
                left_ms = int(self.client.pttl(self.keys(scope)[0]))  # type: ignore[union-attr]
                self.breaker.record_success()
            except REDIS_ERRORS as exc:
                self._redis_failed(exc, "endpoint pause not read")
                left_ms = int(max(0.0, known[0] - now) * 1000) if known is not None else 0
        elif known is not None:
            left_ms = int(max(0.0, known[0] - now) * 1000)
        self._remember(scope, now, max(0, left_ms) / 1000)
        return max(0, left_ms) / 1000

    def pause(self, scope: str, seconds: float, *, reason: str = "retry_after") -> float:
        """Pause `scope` for `seconds` (capped at `max_pause`; a longer pause already set stays).
        Returns the pause now in force, in seconds."""
        want = max(0.001, min(float(seconds), self.config.max_pause))
        left = want
        if self._pause_script is not None and self._redis_usable():
            try:
                left = int(self._pause_script(keys=[self.keys(scope)[0]], args=[int(want * 1000)])) / 1000
                self.breaker.record_success()
            except REDIS_ERRORS as exc:
                self._redis_failed(exc, "endpoint pause kept in this process only")
        PAUSES.labels(reason).inc()
        self._remember(scope, self.clock(), left)
        return left

    def failed(self, scope: str) -> float:
        """A transient failure of `scope`; returns the pause it started (0: none: the run is still
        short, or the endpoint is paused already, and failures of sends started before do not count)."""
        cfg = self.config
        self._reset_due.pop(scope, None)  # the next success resets the run at once
        if self._failure_script is None or not self._redis_usable():
            return 0.0
        try:
            paused_ms = int(
                self._failure_script(
                    keys=list(self.keys(scope)),
                    args=[
                        cfg.failure_threshold,
                        int(cfg.failure_pause * 1000),
                        int(cfg.max_pause * 1000),
                        int(self._run_memory() * 1000),
                    ],
                )
            )
            self.breaker.record_success()
        except REDIS_ERRORS as exc:
            self._redis_failed(exc, "endpoint failure not counted")
            return 0.0
        if paused_ms < 0:  # already paused (by an earlier failure of this run)
            self._remember(scope, self.clock(), -paused_ms / 1000)
            return 0.0
        if paused_ms == 0:
            return 0.0
        PAUSES.labels("failures").inc()
        self._remember(scope, self.clock(), paused_ms / 1000)
        return paused_ms / 1000

    def succeeded(self, scope: str) -> None:
        """A send to `scope` went through: its failure run ends (whichever worker counted it; Redis is
        told at most once per `recheck` per endpoint, so a busy endpoint costs no call per send)."""
        now = self.clock()
        if now < self._reset_due.get(scope, float("-inf")) or not self._redis_usable():
            return
        self._reset_due[scope] = now + self.config.recheck
        try:
            self.client.delete(self.keys(scope)[1])  # type: ignore[union-attr]
            self.breaker.record_success()
        except REDIS_ERRORS as exc:
            self._redis_failed(exc, "endpoint failure run not reset")

    def _redis_usable(self) -> bool:
        return self.client is not None and self.breaker.allow_request()

    def _redis_failed(self, exc: Exception, what: str) -> None:
        self.breaker.record_failure()
        REDIS_FAILURES.inc()
        log.debug(what, extra={"error": str(exc)[:200]})

    def _run_memory(self) -> float:
        """A failure run is remembered past the longest pause, so the send after a pause extends it."""
        return self.config.max_pause + 60.0

    def _remember(self, scope: str, now: float, left: float) -> None:
        resumes = now + left
        self._known[scope] = (resumes, max(resumes, now + self.config.recheck))
        if len(self._known) > MAX_KNOWN:
            self._known = {s: k for s, k in self._known.items() if k[1] > now}
        if len(self._reset_due) > MAX_KNOWN:
            self._reset_due = {s: t for s, t in self._reset_due.items() if t > now}
