"""Redis dedup leases (claim -> confirm | release) that record their owner, pass from a dead owner to
the next claimer at once, and fail open when Redis is unavailable."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping

import redis
from redis.commands.core import Script

from notifications.redis_connect import REDIS_ERRORS
from notifications.redis_keys import (
    dedup_shard_tag,
    dedup_shard_tags,
    hash_tag,
    require_untagged,
    sharded_counter_key,
)
from notifications.redis_multi import ScriptCall, evalsha_pipelined

from .circuit_breaker import CircuitBreaker
from .claim_owners import Owner
from .dedup_results import ClaimResult, ClaimStatus, ConfirmResult, ReleaseResult, required_lease_ms
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


_CONFIRM_CODES = {
    1: ConfirmResult.CONFIRMED,
    2: ConfirmResult.ALREADY_SENT,
    3: ConfirmResult.RECORDED_AFTER_EXPIRY,
    0: ConfirmResult.LEASE_LOST,
}


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

    **Owners** (``owner``: a worker's instance and incarnation; the token is ``<instance>|<incarnation>``).
    Such a worker keeps a short-lived liveness key in every dedup shard,
    ``{prefix}worker:{<shard>}:<instance>`` = its incarnation (:meth:`refresh_liveness`, about once a
    second). A claim whose owner's liveness key in the claim's shard is gone (the process died or
    stalled), or holds another incarnation, or whose owner is an earlier incarnation of the
    claimer's own instance (a restarted worker), is taken over at once by the next claim
    (``lua/dedup_take_over.lua``: the claim, the owner's liveness key of the same shard, one slot)
    instead of waiting for the lease to expire. A worker that stalled must therefore check, before
    it sends, that its claim is still its own (:meth:`reclaim_many`).

    ``lease_ms`` must outlast the whole in-process send: lease > provider timeout x in-process
    attempts (+ backoff sleeps); see :func:`required_lease_ms`. Pass ``provider_timeout_s`` (and
    ``in_process_attempts``) to have the constructor enforce it.

    RedisError policy (every Redis call goes through ``breaker``):

    * claim / claim_many: any Redis error (``REDIS_ERRORS``: connection refused, timeout, READONLY,
      ...) or an open breaker -> FAIL OPEN: ``ClaimResult(CLAIMED, fail_open=True)`` for every key
      and ``on_fail_open(number_of_keys)``. Rationale: a duplicate notification is better than a
      dropped one; the worker exports the counter so fail-open sends are visible. A caller that
      would rather wait for Redis for a while uses ``try_claim_many`` (None instead of failing open).
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
        owner: Owner | None = None,
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
        if token is not None and owner is not None:
            raise ValueError("pass a token or an owner (whose token is <instance>|<incarnation>), not both")
        self.client = client
        self.prefix = require_untagged(prefix, "the key prefix")
        self.lease_ms = lease_ms
        self.sent_ttl_ms = sent_ttl_ms
        self.tally_ttl_ms = tally_ttl_ms
        self.owner = owner
        if owner is not None:
            token = owner.token
        self.token = token or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        if self.token == SENT_MARKER:
            raise ValueError(f"token must not equal the sent marker {SENT_MARKER!r}")
        self.breaker = breaker or CircuitBreaker("redis-dedup", failure_threshold=3, cool_down_seconds=5.0)
        self.on_fail_open = on_fail_open
        self._confirm_script = register_lua(client, "dedup_confirm")
        self._release_script = register_lua(client, "dedup_release")
        self._take_over_script = register_lua(client, "dedup_take_over")
        self._liveness_script = register_lua(client, "worker_liveness")
        self._last_error = ""

    def key(self, idempotency_key: str) -> str:
        """Redis key for an idempotency key."""
        if not idempotency_key:
            raise ValueError("idempotency_key must be a non-empty string")
        return f"{self.prefix}dedup:{hash_tag(dedup_shard_tag(idempotency_key))}:{idempotency_key}"

    def tally_key(self, idempotency_key: str, tally: str) -> str:
        """The part of counter ``tally`` that lives in the slot of an idempotency key's dedup key."""
        return sharded_counter_key(self.prefix, tally, dedup_shard_tag(idempotency_key))

    def liveness_key(self, idempotency_key: str, instance: str) -> str:
        """Worker ``instance``'s liveness key in the shard (and slot) of an idempotency key's dedup key."""
        return self._liveness_key(dedup_shard_tag(idempotency_key), instance)

    def _liveness_key(self, tag: str, instance: str) -> str:
        return f"{self.prefix}worker:{hash_tag(tag)}:{instance}"

    # -- claim ---------------------------------------------------------------------------------

    def claim(self, idempotency_key: str) -> ClaimResult:
        """Claim one message (see :meth:`claim_many` for the error policy)."""
        return self.claim_many([idempotency_key])[idempotency_key]

    def claim_many(self, idempotency_keys: Iterable[str]) -> dict[str, ClaimResult]:
        """Claim several messages with one pipelined round trip; duplicates in the input count once.

        RedisError policy: fail open (CLAIMED, fail_open=True) + ``on_fail_open(n)``.
        """
        keys = list(dict.fromkeys(idempotency_keys))
        results = self.try_claim_many(keys)
        if results is None:
            return self.fail_open(keys, self._last_error)
        return results

    def try_claim_many(
        self, idempotency_keys: Iterable[str], *, mine: Collection[str] = ()
    ) -> dict[str, ClaimResult] | None:
        """Like :meth:`claim_many`, but None (nothing counted) when Redis could not be reached.

        A claim held by an owner that is gone is taken over (one more round trip, only for such
        keys; see the class docstring). ``mine``: keys whose claim by this store's own token counts
        as CLAIMED rather than IN_FLIGHT -- those the caller itself claimed in an attempt whose
        answer it never got (Redis went away mid-call). Per-key server errors fail open for that key.
        """
        keys = list(dict.fromkeys(idempotency_keys))
        if not keys:
            return {}
        replies = self._pipelined(keys, self._claim_command, "claim")
        if replies is None:
            return None
        results: dict[str, ClaimResult] = {}
        failed: list[str] = []
        contested: dict[str, tuple[str, Owner]] = {}
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, Exception):
                failed.append(key)
                logger.warning("dedup claim of %r failed: %r", key, reply)
                continue
            current = _text(reply)
            if current is None or (current == self.token and key in mine):
                results[key] = ClaimResult(ClaimStatus.CLAIMED)
            elif current == SENT_MARKER:
                results[key] = ClaimResult(ClaimStatus.ALREADY_SENT)
            elif current != self.token and (holder := Owner.parse(current)) is not None:
                contested[key] = (current, holder)
            else:
                results[key] = ClaimResult(ClaimStatus.IN_FLIGHT)
        if contested:
            taken = self._take_over(contested)
            if taken is None:
                return None  # the claims above were made: the caller's retry passes them as `mine`
            results.update(taken)
        if failed:
            results.update(self.fail_open(failed, "per-key server error"))
        return {k: results[k] for k in keys}

    def _claim_command(self, pipe: redis.client.Pipeline, redis_key: str) -> None:
        # NX + GET: returns nil if we set it, else the current value (Redis >= 7.0).
        pipe.set(redis_key, self.token, nx=True, px=self.lease_ms, get=True)

    def _pipelined(
        self, keys: list[str], command: Callable[[redis.client.Pipeline, str], object], what: str
    ) -> list | None:
        """One command per key (`command(pipe, redis key)`) in one pipeline through the breaker: the
        replies (a per-key error as its exception), or None when Redis could not be reached."""
        redis_keys = [self.key(k) for k in keys]  # validate before touching Redis
        if not self.breaker.allow_request():
            self._last_error = "circuit open"
            return None
        try:
            pipe = self.client.pipeline(transaction=False)
            for rk in redis_keys:
                command(pipe, rk)
            replies = pipe.execute(raise_on_error=False)
        except REDIS_ERRORS as exc:
            self.breaker.record_failure()
            self._last_error = repr(exc)
            logger.warning("dedup %s of %d key(s) failed: %r", what, len(keys), exc)
            return None
        self.breaker.record_success()
        return replies

    def _take_over(self, contested: dict[str, tuple[str, Owner]]) -> dict[str, ClaimResult] | None:
        """Claims held by another owner: taken over where that owner is gone, else in flight."""
        keys = list(contested)
        calls: list[ScriptCall] = []
        for key in keys:
            current, holder = contested[key]
            successor = self.owner is not None and self.owner.succeeds(holder)
            calls.append(
                (
                    [self.key(key), self.liveness_key(key, holder.instance)],
                    [current, holder.incarnation, "1" if successor else "0", self.token, self.lease_ms, SENT_MARKER],
                )
            )
        replies = self._run_script_many(keys, self._take_over_script, calls, "take-over")
        if replies is None:
            return None
        results: dict[str, ClaimResult] = {}
        taken_from: dict[str, int] = {}
        for key, reply in zip(keys, replies, strict=True):
            if reply == 1:
                results[key] = ClaimResult(ClaimStatus.CLAIMED, taken_over=True)
                taken_from[contested[key][0]] = taken_from.get(contested[key][0], 0) + 1
            elif reply == 2:
                results[key] = ClaimResult(ClaimStatus.ALREADY_SENT)
            else:  # the owner is alive, or the take-over failed for this key: leave it alone
                results[key] = ClaimResult(ClaimStatus.IN_FLIGHT)
        for owner, count in taken_from.items():
            logger.info("dedup: %d claim(s) taken over from %s (gone)", count, owner)
        return results

    def fail_open(self, keys: list[str], why: str) -> dict[str, ClaimResult]:
        """Claims made blindly (Redis unusable): logged and counted (``on_fail_open``)."""
        logger.warning("dedup failing open for %d key(s): %s", len(keys), why)
        if self.on_fail_open is not None:
            try:
                self.on_fail_open(len(keys))
            except Exception:
                logger.exception("on_fail_open callback raised")
        return dict.fromkeys(keys, ClaimResult(ClaimStatus.CLAIMED, fail_open=True))

    def reclaim_many(self, idempotency_keys: Iterable[str]) -> dict[str, ClaimStatus] | None:
        """Right before sending: is each claim still ours? CLAIMED when it is, or when it is gone
        (expired, or lost with a Redis restart) and has just been claimed again; IN_FLIGHT when
        another worker took it over; ALREADY_SENT when it was sent meanwhile. None when Redis could
        not be reached (a per-key server error counts as still ours, as a claim fails open)."""
        keys = list(dict.fromkeys(idempotency_keys))
        if not keys:
            return {}
        replies = self._pipelined(keys, self._claim_command, "ownership check")
        if replies is None:
            return None
        results: dict[str, ClaimStatus] = {}
        for key, reply in zip(keys, replies, strict=True):
            current = None if isinstance(reply, Exception) else _text(reply)
            if current is None or current == self.token:
                results[key] = ClaimStatus.CLAIMED
            elif current == SENT_MARKER:
                results[key] = ClaimStatus.ALREADY_SENT
            else:
                results[key] = ClaimStatus.IN_FLIGHT
        return results

    def owned_many(self, idempotency_keys: Iterable[str]) -> dict[str, bool] | None:
        """Which claims are still this store's own (one pipelined GET; nothing is written, so a claim
        released meanwhile is never made again). None when Redis could not be reached."""
        keys = list(dict.fromkeys(idempotency_keys))
        if not keys:
            return {}
        replies = self._pipelined(keys, lambda pipe, key: pipe.get(key), "ownership read")
        if replies is None:
            return None
        return {
            key: not isinstance(reply, Exception) and _text(reply) == self.token
            for key, reply in zip(keys, replies, strict=True)
        }

    # -- liveness ------------------------------------------------------------------------------

    def refresh_liveness(self, ttl_ms: int) -> bool | None:
        """Keep this owner's liveness key alive for ``ttl_ms`` in every dedup shard (one pipeline;
        not through the breaker: it is also how a caller learns that Redis is back).

        True when every shard's key was refreshed; False when a newer incarnation of this instance
        holds one (this process was superseded: its keys are left to the successor); None when Redis
        could not be reached or a shard failed (the keys may lapse: claims made before the next
        successful refresh may be taken over).
        """
        if self.owner is None:
            raise ValueError("liveness keys need an owner (instance and incarnation)")
        tags = list(dedup_shard_tags())
        calls: list[ScriptCall] = [
            ([self._liveness_key(tag, self.owner.instance)], [self.owner.incarnation, ttl_ms]) for tag in tags
        ]
        replies = self._run_script_many(
            tags, self._liveness_script, calls, "liveness refresh", breaker=False, quiet=True
        )
        if replies is None or any(r is None for r in replies):
            return None
        return all(r == 1 for r in replies)

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
        results = self.try_confirm_many(keys, tallies=tallies)
        return dict.fromkeys(keys, ConfirmResult.UNAVAILABLE) if results is None else results

    def try_confirm_many(
        self, idempotency_keys: Iterable[str], *, tallies: Mapping[str, str] | None = None
    ) -> dict[str, ConfirmResult] | None:
        """Like :meth:`confirm_many`, but None when Redis could not be reached at all (the caller
        may confirm again once it is back; a confirm that did run answers ALREADY_SENT the second
        time and counts nothing twice)."""
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
        if replies is None:
            return None
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
        replies = self._run_script_many(keys, self._release_script, calls, "release") or [None] * len(keys)
        return {
            k: ReleaseResult.UNAVAILABLE
            if r is None
            else (ReleaseResult.RELEASED if int(r) == 1 else ReleaseResult.NOT_OWNER)
            for k, r in zip(keys, replies, strict=True)
        }

    def _run_script_many(
        self,
        keys: list[str],
        script: Script,
        calls: list[ScriptCall],
        what: str,
        *,
        breaker: bool = True,
        quiet: bool = False,
    ) -> list[int | None] | None:
        """Run ``script`` once per key (its call: the key's Redis keys, all of one slot, and the
        arguments) in one pipeline; None marks a key whose call failed, and None instead of the list
        means Redis could not be reached at all (breaker open, connection error). ``quiet``: an
        unreachable Redis is logged at debug level (a periodic call; its caller reports outages)."""
        if not keys:
            return []
        if breaker and not self.breaker.allow_request():
            logger.warning("dedup %s skipped for %d key(s): circuit open", what, len(keys))
            return None
        try:
            replies = evalsha_pipelined(self.client, script, calls, raise_on_error=False)
        except REDIS_ERRORS as exc:
            if breaker:
                self.breaker.record_failure()
            logger.log(
                logging.DEBUG if quiet else logging.WARNING, "dedup %s failed for %d key(s): %r", what, len(keys), exc
            )
            return None
        if breaker:
            self.breaker.record_success()
        out: list[int | None] = []
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, Exception):
                logger.warning("dedup %s of %r failed: %r", what, key, reply)
                out.append(None)
            else:
                out.append(int(reply))
        return out
