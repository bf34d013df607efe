"""What the dedup store's claim, confirm and release answer, and how long a claim's lease must be.
See docs/architecture.md, "Delivery" (Dedup)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class ClaimStatus(enum.StrEnum):
    CLAIMED = "claimed"  # we own the lease: send, then confirm() or release()
    ALREADY_SENT = "already_sent"  # a previous delivery was confirmed: drop (ack) the message
    IN_FLIGHT = "in_flight"  # another worker holds the lease: retry later, do not send now


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """Outcome of a claim. ``fail_open`` is True when Redis was unusable and we claimed blindly."""

    status: ClaimStatus
    fail_open: bool = False
    #: The claim was taken over from an owner that is gone (see ``DedupStore.try_claim_many``).
    taken_over: bool = False

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
