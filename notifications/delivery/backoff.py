"""Full-jitter exponential backoff, retry-tier selection and the retry/give-up decision."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_TIERS",
    "RetryAction",
    "RetryDecision",
    "RetryPolicy",
    "RetryTier",
    "choose_tier",
    "full_jitter_delay",
]


@dataclass(frozen=True, slots=True)
class RetryTier:
    """A delayed-retry topic: messages parked there become eligible after ``seconds``."""

    seconds: float
    suffix: str  # appended to the base topic, e.g. "notifications.email" + "." + "retry.5s"


DEFAULT_TIERS: tuple[RetryTier, ...] = (
    RetryTier(5.0, "retry.5s"),
    RetryTier(60.0, "retry.1m"),
    RetryTier(600.0, "retry.10m"),
)


def full_jitter_delay(
    retry_index: int,
    *,
    base: float,
    cap: float,
    rng: random.Random | None = None,
    retry_after: float | None = None,
) -> float:
    """Return ``uniform(0, min(cap, base * 2**retry_index))``, but never less than ``retry_after``.

    ``retry_index`` is 0 for the first retry, 1 for the second, ... A provider's Retry-After
    (seconds, already parsed) is a floor and may exceed ``cap``: the provider told us when it will
    accept traffic again, sending earlier only burns an attempt.
    """
    if retry_index < 0:
        raise ValueError("retry_index must be >= 0")
    if base < 0 or cap < 0:
        raise ValueError("base and cap must be >= 0")
    # 2**1100 overflows a float; once base*2**i exceeds cap the exponent no longer matters.
    ceiling = cap if retry_index >= 1023 else min(cap, base * math.ldexp(1.0, retry_index))
    delay = (rng or random).uniform(0.0, ceiling)
    delay = min(max(delay, 0.0), ceiling)  # uniform() may round up to b
    if retry_after is not None and math.isfinite(retry_after) and retry_after > delay:
        delay = float(retry_after)
    return delay


def choose_tier(delay: float, tiers: Sequence[RetryTier] = DEFAULT_TIERS) -> RetryTier:
    """Pick the retry topic for a delay: the smallest tier whose ``seconds >= delay``.

    Rounding *up* keeps each tier topic FIFO-friendly: every message parked in tier ``T`` at time
    ``t`` has ``not_before <= t + T``, so the tier consumer can simply wait for the head record's
    ``max(timestamp + T, not_before)`` without head-of-line blocking longer than ``T``. A delay
    longer than the largest tier (e.g. a 1 h Retry-After) gets the largest tier; the consumer must
    re-park the message (``choose_tier(not_before - now)``) while ``not_before`` is in the future.
    """
    if not tiers:
        raise ValueError("at least one tier is required")
    ordered = sorted(tiers, key=lambda t: t.seconds)
    for tier in ordered:
        if delay <= tier.seconds:
            return tier
    return ordered[-1]


class RetryAction(enum.StrEnum):
    RETRY_IN_PROCESS = "retry_in_process"  # sleep `delay` in the worker, then try again
    RETRY_LATER = "retry_later"  # publish to `tier.suffix` topic with `not_before`
    GIVE_UP = "give_up"  # dead-letter with `reason`


@dataclass(frozen=True, slots=True)
class RetryDecision:
    action: RetryAction
    delay: float = 0.0
    tier: RetryTier | None = None
    not_before: float | None = None  # epoch seconds (same clock as `now`)
    reason: str | None = None  # 'max_attempts' | 'max_age' for GIVE_UP


@dataclass(frozen=True)
class RetryPolicy:
    """Retry budget and backoff shape for one channel/provider.

    ``attempt`` passed to :meth:`decide` is the number of delivery attempts already made and failed
    (1 after the first failure). ``max_attempts`` counts all attempts including the first.
    """

    max_attempts: int = 8
    max_age_seconds: float = 24 * 3600.0
    base: float = 0.5
    cap: float = 600.0
    in_process_threshold: float = 2.0
    tiers: tuple[RetryTier, ...] = DEFAULT_TIERS
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_age_seconds <= 0 or self.base < 0 or self.cap < 0 or self.in_process_threshold < 0:
            raise ValueError("max_age_seconds must be > 0; base, cap, in_process_threshold >= 0")
        if not self.tiers:
            raise ValueError("at least one retry tier is required")

    def delay_for(self, attempt: int, retry_after: float | None = None) -> float:
        """Backoff before attempt ``attempt + 1`` (full jitter, Retry-After as a floor)."""
        return full_jitter_delay(
            max(attempt - 1, 0), base=self.base, cap=self.cap, rng=self.rng, retry_after=retry_after
        )

    def decide(
        self,
        attempt: int,
        first_attempt_at: float,
        now: float,
        retry_after: float | None = None,
    ) -> RetryDecision:
        """Decide what to do after failed attempt number ``attempt`` (1-based).

        ``first_attempt_at`` and ``now`` are epoch seconds (they travel between processes in
        message headers, so a wall clock is required). Gives up with reason ``'max_attempts'`` when
        the attempt budget is spent, and ``'max_age'`` when the message is already older than
        ``max_age_seconds`` or the next attempt could not start before that age is reached.
        """
        if attempt < 1:
            raise ValueError("attempt is 1-based: the number of attempts already made")
        if attempt >= self.max_attempts:
            return RetryDecision(RetryAction.GIVE_UP, reason="max_attempts")
        expires_at = first_attempt_at + self.max_age_seconds
        if now >= expires_at:
            return RetryDecision(RetryAction.GIVE_UP, reason="max_age")
        delay = self.delay_for(attempt, retry_after)
        not_before = now + delay
        if not_before >= expires_at:
            return RetryDecision(RetryAction.GIVE_UP, delay=delay, reason="max_age")
        if delay <= self.in_process_threshold:
            return RetryDecision(RetryAction.RETRY_IN_PROCESS, delay=delay, not_before=not_before)
        return RetryDecision(
            RetryAction.RETRY_LATER, delay=delay, tier=choose_tier(delay, self.tiers), not_before=not_before
        )
