"""Error injection: deterministic recipient triggers plus configurable random error rates.

Trigger convention (identical for every provider; matched case-insensitively anywhere in the
recipient: e-mail address, phone number, device token, or the webhook URL path):

==================  ======================================================================
marker              effect
==================  ======================================================================
``invalid``         permanent bad-request error (provider's real "invalid recipient" 400)
``unregistered``    permanent invalid-token / gone error (FCM 404 UNREGISTERED, APNs 410 ...)
``fail5xx-N``       the first N requests for that recipient get a transient 503, then succeed
``fail500-N``       same with a 500
``fail503-N``       same with a 503
``fail429-N``       the first N requests for that recipient get the provider's rate-limit answer
``slow-MS``         adds MS milliseconds of latency to that request
==================  ======================================================================

Phone numbers that must stay valid E.164 can use the reserved ``+1500555DDDD`` range instead
(``+1500555`` is Twilio's own magic test prefix): ``+15005550001`` = invalid (Twilio's magic
"invalid number"), ``+15005550004`` = unregistered (Twilio's magic "blocked/unsubscribed"),
``+1500555 5 N xx`` = fail5xx-N and ``+1500555 9 N xx`` = fail429-N (``xx`` is free, so
``+15005555300`` and ``+15005555301`` are two recipients that each fail 3 times).

Fail-N counters are per provider and per exact recipient string, count only requests that passed the
contract rate limit, and are cleared by ``POST /_sandbox/reset``.
"""

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
