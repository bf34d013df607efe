"""Who holds a dedup claim: a worker instance (stable across restarts) and the incarnation of its process.

Why claims name their owner: `docs/architecture.md`, "Delivery" (claim owners, take-over and fencing).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from notifications.redis_keys import require_untagged

#: Between a worker's instance and its incarnation in the claims it makes: ``<instance>|<incarnation>``.
OWNER_SEPARATOR = "|"


def new_incarnation() -> str:
    """An id unique to one process start that sorts by start time: epoch milliseconds (fixed width)
    and a random part."""
    return f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a claim: a worker ``instance`` (its static name, stable across restarts) and the
    ``incarnation`` of the process (new at every start)."""

    instance: str
    incarnation: str

    def __post_init__(self) -> None:
        for what, value in (("instance", self.instance), ("incarnation", self.incarnation)):
            if not value or OWNER_SEPARATOR in value:
                raise ValueError(f"a worker {what} must be non-empty and without {OWNER_SEPARATOR!r}: {value!r}")
        require_untagged(self.instance, "a worker instance")  # it is part of the liveness keys

    @property
    def token(self) -> str:
        return f"{self.instance}{OWNER_SEPARATOR}{self.incarnation}"

    @classmethod
    def parse(cls, token: str) -> Owner | None:
        """The owner a claim names; None for a token of another form (a store without an owner)."""
        instance, sep, incarnation = token.rpartition(OWNER_SEPARATOR)
        if not sep or not instance or not incarnation:
            return None
        try:
            return cls(instance, incarnation)
        except ValueError:
            return None

    def succeeds(self, other: Owner) -> bool:
        """True when ``other`` is an earlier process of this instance (it is gone: this one started)."""
        return other.instance == self.instance and other.incarnation < self.incarnation
