"""Error injection: deterministic recipient triggers (``invalid``, ``unregistered``, ``fail5xx-N``,
``fail429-N``, ``slow-MS``, ``busy-S``, the ``+1500555DDDD`` phone range) and configurable random error
rates. What each trigger answers per provider: README.md, "Trigger conventions"."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from provider_sandbox.config import ErrorRates

BAD_REQUEST = "bad_request"
INVALID_TOKEN = "invalid_token"  # noqa: S105 - a fault kind's name
TRANSIENT = "transient"
THROTTLED = "throttled"  # forced rate-limit answer from a fail429-N trigger

_COUNTED = re.compile(r"fail(5xx|500|503|429)-(\d+)", re.IGNORECASE)
_SLOW = re.compile(r"slow-(\d+)", re.IGNORECASE)
_MAGIC_PHONE = re.compile(r"^\+1500555(\d)(\d)(\d\d)$")


@dataclass(frozen=True, slots=True)
class Fault:
    """An error to answer instead of accepting the request."""

    kind: str  # BAD_REQUEST | INVALID_TOKEN | TRANSIENT | THROTTLED
    status: int | None = None  # 500 or 503 for TRANSIENT
    recipient: str | None = None  # the recipient that triggered it (None for random faults)
    source: str = "trigger"  # "trigger" | "random"


def _static_fault(recipient: str) -> Fault | None:
    low = recipient.lower()
    if "unregistered" in low:
        return Fault(INVALID_TOKEN, recipient=recipient)
    if "invalid" in low:
        return Fault(BAD_REQUEST, recipient=recipient)
    phone = _MAGIC_PHONE.match(recipient)
    if phone and phone.group(1) == "0" and phone.group(2) == "0":
        if phone.group(3) == "01":
            return Fault(BAD_REQUEST, recipient=recipient)
        if phone.group(3) == "04":
            return Fault(INVALID_TOKEN, recipient=recipient)
    return None


def _counted_marker(recipient: str) -> tuple[str, int] | None:
    """``(flavour, N)`` for fail-N markers (flavour is 5xx/500/503/429)."""
    match = _COUNTED.search(recipient)
    if match:
        return match.group(1).lower(), int(match.group(2))
    phone = _MAGIC_PHONE.match(recipient)
    if phone and phone.group(1) in ("5", "9"):
        return ("5xx" if phone.group(1) == "5" else "429"), int(phone.group(2))
    return None


class FaultInjector:
    """Decides, per request, whether to answer an error instead of accepting it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.attempts: Counter[str] = Counter()

    def reset(self) -> None:
        self.attempts.clear()

    @staticmethod
    def extra_latency(recipients: Iterable[str]) -> float:
        """Seconds of extra latency requested by ``slow-MS`` markers (the largest one wins)."""
        slowest = 0
        for recipient in recipients:
            match = _SLOW.search(recipient)
            if match:
                slowest = max(slowest, int(match.group(1)))
        return slowest / 1000.0

    def decide(self, recipients: Iterable[str], rates: ErrorRates) -> Fault | None:
        for recipient in recipients:
            fault = _static_fault(recipient) or self._counted(recipient)
            if fault is not None:
                return fault
        return self._random(rates)

    def _counted(self, recipient: str) -> Fault | None:
        marker = _counted_marker(recipient)
        if marker is None:
            return None
        flavour, limit = marker
        self.attempts[recipient] += 1
        if self.attempts[recipient] > limit:
            return None
        if flavour == "429":
            return Fault(THROTTLED, recipient=recipient)
        return Fault(TRANSIENT, status=500 if flavour == "500" else 503, recipient=recipient)

    def _random(self, rates: ErrorRates) -> Fault | None:
        total = rates.transient + rates.bad_request + rates.invalid_token
        if total <= 0:
            return None
        draw = self.rng.random()
        if draw < rates.transient:
            return Fault(TRANSIENT, status=self.rng.choice((500, 503)), source="random")
        if draw < rates.transient + rates.bad_request:
            return Fault(BAD_REQUEST, source="random")
        if draw < total:
            return Fault(INVALID_TOKEN, source="random")
        return None
