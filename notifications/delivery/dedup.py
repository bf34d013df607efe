"""Redis dedup leases (claim -> confirm | release) that fail open when Redis is unavailable."""

from __future__ import annotations

import enum
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import redis
from redis.commands.core import Script

from notifications.redis_connect import REDIS_ERRORS
from notifications.redis_keys import dedup_shard_tag, hash_tag, require_untagged, sharded_counter_key
from notifications.redis_multi import ScriptCall, evalsha_pipelined

from .circuit_breaker import CircuitBreaker
from .redis_client import register_lua

__all__ = [
    "SENT_MARKER",
    "ClaimResult",
    "ClaimStatus",
    "ConfirmResult",
    "DedupStore",
    "ReleaseResult",
    "required_lease_ms",
]

logger = logging.getLogger(__name__)

SENT_MARKER = "sent"
DEFAULT_LEASE_MS = 30_000
DEFAULT_SENT_TTL_MS = 24 * 3600 * 1000
#: A tally (see ``confirm_many``) outlives a campaign's state in Redis.
DEFAULT_TALLY_TTL_MS = 14 * 24 * 3600 * 1000


class ClaimStatus(enum.StrEnum):
    CLAIMED = "claimed"  # we own the lease: send, then confirm() or release()
    ALREADY_SENT = "already_sent"  # a previous delivery was confirmed: drop (ack) the message
    IN_FLIGHT = "in_flight"  # another worker holds the lease: retry later, do not send now


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """Outcome of a claim. ``fail_open`` is True when Redis was unusable and we claimed blindly."""

    status: ClaimStatus
    fail_open: bool = False

    @property
    def should_send(self) -> bool:
        return self.status is ClaimStatus.CLAIMED


class ConfirmResult(enum.StrEnum):
    CONFIRMED = "confirmed"  # our lease became the 'sent' marker
    ALREADY_SENT = "already_sent"  # someone else confirmed first (we were a duplicate)
    RECORDED_AFTER_EXPIRY = "recorded_after_expiry"  # lease had expired; 'sent' written anyway
    LEASE_LOST = "lease_lost"  # lease expired and another worker re-claimed: left untouched
    UNAVAILABLE = "unavailable"  # Redis error / breaker open: nothing recorded


class ReleaseResult(enum.StrEnum):
    RELEASED = "released"
    NOT_OWNER = "not_owner"  # already gone, 'sent', or another worker's lease
    UNAVAILABLE = "unavailable"  # Redis error / breaker open: the lease will simply expire


_CONFIRM_CODES = {
    1: ConfirmResult.CONFIRMED,
    2: ConfirmResult.ALREADY_SENT,
    3: ConfirmResult.RECORDED_AFTER_EXPIRY,
    0: ConfirmResult.LEASE_LOST,
}


def required_lease_ms(
    provider_timeout_s: float,
    in_process_attempts: int,
    in_process_backoff_s: float = 0.0,
    safety_factor: float = 1.5,
) -> int:
    """Smallest safe lease: it must outlast every in-process attempt of one send.

    ``lease > provider_timeout x in_process_attempts`` (+ the in-process backoff sleeps between
    them), times a safety factor for GC pauses and rate-limiter waits. If the lease expires while
    the worker is still sending, another worker can claim the key and send a duplicate.
    """
    budget = provider_timeout_s * in_process_attempts + in_process_backoff_s * max(in_process_attempts - 1, 0)
    return math.ceil(budget * safety_factor * 1000)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class DedupStore:
    """Idempotency-key leases in Redis, one key per message: ``{prefix}dedup:{<shard>}:<idempotency key>``.

    ``<shard>`` is one of ``DEDUP_SHARDS`` hash tags, chosen from the idempotency key
    (``redis_keys.dedup_shard_tag``): on a Redis Cluster the keys spread evenly over the masters, and
    a confirm can count the send in a counter of its own slot (``tallies``).

    Protocol for one message::

        result = store.claim(key)
        if result.status is ClaimStatus.ALREADY_SENT: ack and drop
        elif result.status is ClaimStatus.IN_FLIGHT: retry later (another worker is on it)
        else: send; on provider acceptance store.confirm(key), on a retryable failure store.release(key)

    Claim is ``SET key <token> NX PX <lease_ms> GET`` (atomic claim-or-read; needs Redis >= 7.0).
    Confirm/release are Lua compare-and-set / compare-and-delete on the token.

    ``lease_ms`` must outlast the whole in-process send: lease > provider timeout x in-process
    attempts (+ backoff sleeps); see :func:`required_lease_ms`. Pass ``provider_timeout_s`` (and
    ``in_process_attempts``) to have the constructor enforce it.

    RedisError policy (every Redis call goes through ``breaker``):

    * claim / claim_many: any Redis error (``REDIS_ERRORS``: connection refused, timeout, READONLY,
      ...) or an open breaker -> FAIL OPEN: ``ClaimResult(CLAIMED, fail_open=True)`` for every key
      and ``on_fail_open(number_of_keys)``. Rationale: a duplicate notification is better than a
      dropped one; the worker exports the counter so fail-open sends are visible.
    * confirm / release (and the batch forms): errors are logged and swallowed, returning
      ``UNAVAILABLE``. The send already happened (confirm) or will be retried (release); the lease
      expires by itself after ``lease_ms``. Nothing is raised into the delivery loop.
    * Per-key server errors inside a pipeline (e.g. WRONGTYPE) get the same treatment for that
      key only.

    Build the client with short timeouts and few retries (see ``redis_client.make_redis_client``),
    otherwise each fail-open costs redis-py's default retry budget (~4 s on connection refused).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        lease_ms: int = DEFAULT_LEASE_MS,
        sent_ttl_ms: int = DEFAULT_SENT_TTL_MS,
        tally_ttl_ms: int = DEFAULT_TALLY_TTL_MS,
        token: str | None = None,
        breaker: CircuitBreaker | None = None,
        on_fail_open: Callable[[int], None] | None = None,
        provider_timeout_s: float | None = None,
        in_process_attempts: int = 1,
    ) -> None:
        if lease_ms <= 0 or sent_ttl_ms <= 0:
            raise ValueError("lease_ms and sent_ttl_ms must be > 0")
        if provider_timeout_s is not None:
            minimum = required_lease_ms(provider_timeout_s, in_process_attempts, safety_factor=1.0)
            if lease_ms <= minimum:
                raise ValueError(
                    f"lease_ms={lease_ms} must exceed provider_timeout x in_process_attempts = {minimum} ms"
                )
        self.client = client
        self.prefix = require_untagged(prefix, "the key prefix")
        self.lease_ms = lease_ms
        self.sent_ttl_ms = sent_ttl_ms
        self.tally_ttl_ms = tally_ttl_ms
        self.token = token or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        if self.token == SENT_MARKER:
            raise ValueError(f"token must not equal the sent marker {SENT_MARKER!r}")
        self.breaker = breaker or CircuitBreaker("redis-dedup", failure_threshold=3, cool_down_seconds=5.0)
        self.on_fail_open = on_fail_open
        self._confirm_script = register_lua(client, "dedup_confirm")
        self._release_script = register_lua(client, "dedup_release")

    def key(self, idempotency_key: str) -> str:
        """Redis key for an idempotency key."""
        if not idempotency_key:
            raise ValueError("idempotency_key must be a non-empty string")
        return f"{self.prefix}dedup:{hash_tag(dedup_shard_tag(idempotency_key))}:{idempotency_key}"

    def tally_key(self, idempotency_key: str, tally: str) -> str:
        """The part of counter ``tally`` that lives in the slot of an idempotency key's dedup key."""
        return sharded_counter_key(self.prefix, tally, dedup_shard_tag(idempotency_key))

    # -- claim ---------------------------------------------------------------------------------

    def claim(self, idempotency_key: str) -> ClaimResult:
        """Claim one message (see :meth:`claim_many` for the error policy)."""
        return self.claim_many([idempotency_key])[idempotency_key]

    def claim_many(self, idempotency_keys: Iterable[str]) -> dict[str, ClaimResult]:
        """Claim several messages with one pipelined round trip; duplicates in the input count once.

        RedisError policy: fail open (CLAIMED, fail_open=True) + ``on_fail_open(n)``.
        """
        keys = list(dict.fromkeys(idempotency_keys))
        if not keys:
            return {}
        redis_keys = [self.key(k) for k in keys]  # validate before touching Redis
        if not self.breaker.allow_request():
            return self._fail_open(keys, "circuit open")
        try:
            pipe = self.client.pipeline(transaction=False)
            for rk in redis_keys:
                # NX + GET: returns nil if we set it, else the current value (Redis >= 7.0).
                pipe.set(rk, self.token, nx=True, px=self.lease_ms, get=True)
            replies = pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            self.breaker.record_failure()
            return self._fail_open(keys, repr(exc))
        self.breaker.record_success()
        results: dict[str, ClaimResult] = {}
        failed: list[str] = []
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, Exception):
                failed.append(key)
                logger.warning("dedup claim of %r failed: %r", key, reply)
                continue
            current = _text(reply)
            if current is None:
                results[key] = ClaimResult(ClaimStatus.CLAIMED)
            elif current == SENT_MARKER:
                results[key] = ClaimResult(ClaimStatus.ALREADY_SENT)
            else:
                results[key] = ClaimResult(ClaimStatus.IN_FLIGHT)
        if failed:
            results.update(self._fail_open(failed, "per-key server error"))
        return {k: results[k] for k in keys}

    def _fail_open(self, keys: list[str], why: str) -> dict[str, ClaimResult]:
        logger.warning("dedup failing open for %d key(s): %s", len(keys), why)
        if self.on_fail_open is not None:
            try:
                self.on_fail_open(len(keys))
            except Exception:
                logger.exception("on_fail_open callback raised")
        return dict.fromkeys(keys, ClaimResult(ClaimStatus.CLAIMED, fail_open=True))

    # -- confirm / release ---------------------------------------------------------------------

    def confirm(self, idempotency_key: str) -> ConfirmResult:
        """Mark one message sent (TTL ``sent_ttl_ms``). Never raises on Redis errors."""
        return self.confirm_many([idempotency_key])[idempotency_key]

    def confirm_many(
        self, idempotency_keys: Iterable[str], *, tallies: Mapping[str, str] | None = None
    ) -> dict[str, ConfirmResult]:
        """Pipelined compare-and-set of our leases to the sent marker.

        ``tallies`` maps an idempotency key to the name of a counter incremented in the same script
        when that confirm records the send (CONFIRMED or RECORDED_AFTER_EXPIRY): exactly once per
        message, however often it is redelivered (a campaign's ``sent``). The counter is sharded
        like the dedup keys: the script increments ``tally_key(key, name)``, in the dedup key's own
        slot, and the total is the sum over ``redis_keys.sharded_counter_keys(prefix, name)``.

        RedisError policy: log and return UNAVAILABLE (the lease expires on its own; a redelivery
        after that may duplicate -- accepted under at-least-once).
        """
        keys = list(dict.fromkeys(idempotency_keys))
        tallies = tallies or {}
        args = [self.token, SENT_MARKER, self.sent_ttl_ms]
        calls: list[ScriptCall] = [
            ([self.key(k), self.tally_key(k, tallies[k])], [*args, self.tally_ttl_ms])
            if k in tallies
            else ([self.key(k)], args)
            for k in keys
        ]
        replies = self._run_script_many(keys, self._confirm_script, calls, "confirm")
        return {
            k: ConfirmResult.UNAVAILABLE if r is None else _CONFIRM_CODES[int(r)]
            for k, r in zip(keys, replies, strict=True)
        }

    def release(self, idempotency_key: str) -> ReleaseResult:
        """Give our lease up so the message can be retried at once. Never raises on Redis errors."""
        return self.release_many([idempotency_key])[idempotency_key]

    def release_many(self, idempotency_keys: Iterable[str]) -> dict[str, ReleaseResult]:
        """Pipelined compare-and-delete of our leases.

        RedisError policy: log and return UNAVAILABLE (the retry just waits for lease expiry).
        """
        keys = list(dict.fromkeys(idempotency_keys))
        calls: list[ScriptCall] = [([self.key(k)], [self.token]) for k in keys]
        replies = self._run_script_many(keys, self._release_script, calls, "release")
        return {
            k: ReleaseResult.UNAVAILABLE
            if r is None
            else (ReleaseResult.RELEASED if int(r) == 1 else ReleaseResult.NOT_OWNER)
            for k, r in zip(keys, replies, strict=True)
        }

    def _run_script_many(self, keys: list[str], script: Script, calls: list[ScriptCall], what: str) -> list[int | None]:
        """Run ``script`` once per key (its call: the key's Redis keys, all of one slot, and the
        arguments) in one pipeline; None marks a key whose call failed."""
        if not keys:
            return []
        if not self.breaker.allow_request():
            logger.warning("dedup %s skipped for %d key(s): circuit open", what, len(keys))
            return [None] * len(keys)
        try:
            replies = evalsha_pipelined(self.client, script, calls, raise_on_error=False)
        except REDIS_ERRORS as exc:
            self.breaker.record_failure()
            logger.warning("dedup %s failed for %d key(s): %r", what, len(keys), exc)
            return [None] * len(keys)
        self.breaker.record_success()
        out: list[int | None] = []
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, Exception):
                logger.warning("dedup %s of %r failed: %r", what, key, reply)
                out.append(None)
            else:
                out.append(int(reply))
        return out
