"""Kill switches as a channel worker honours them: decided per message right before its send is booked.

Why the worker checks again after the dispatcher: `docs/architecture.md`, "Kill switches".
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from notifications.bus.topics import channel_topic
from notifications.delivery.jobs import Job
from notifications.delivery.outcomes import Outcomes, carried_headers
from notifications.delivery.provider_slots import ProviderSlot
from notifications.dispatch.killswitch import REFRESH_SECONDS, KillSwitchBoard
from notifications.dispatch.screening import KILL_SWITCH, kill_switch_drops, kill_switch_holds, kill_switch_urgent
from notifications.outages import dependency_of

log = logging.getLogger(__name__)

STOPPED = Counter(
    "worker_kill_switch_stops_total",
    "Messages a kill switch parked or dropped in a worker",
    ["channel", "provider", "action"],
)


class SwitchAction(enum.StrEnum):
    SEND = "send"
    PARK = "park"  # to `notif.<channel>.delayed`, sent after the drain
    DROP = "drop"  # recorded suppressed, never sent


def switch_action(mode: str | None, *, urgent: bool) -> SwitchAction:
    """The decision table: pause parks everything, delay parks what is not urgent, drop_non_urgent
    drops what is not urgent; normal (or no switch) sends. The rules are the dispatcher's."""
    if kill_switch_holds(mode, urgent=urgent):
        return SwitchAction.PARK
    if kill_switch_drops(mode, urgent=urgent):
        return SwitchAction.DROP
    return SwitchAction.SEND


@dataclass(frozen=True, slots=True)
class SwitchStop:
    """A switch stopped this message: park or drop, which mode, and the provider's name ('' for the channel)."""

    action: SwitchAction
    mode: str
    provider: str = ""

    @property
    def reason(self) -> str:
        """The delivery-log reason, as the dispatcher writes it (`kill_switch` for a drop)."""
        return f"kill_switch_{self.mode}" if self.action == SwitchAction.PARK else KILL_SWITCH


def choose_provider(
    message: Mapping[str, Any],
    slots: Iterable[ProviderSlot],
    *,
    channel_mode: str,
    provider_mode: Callable[[str], str],
    kind: str | None = None,
) -> ProviderSlot | SwitchStop | None:
    """The provider to send `message` with, a `SwitchStop`, or None (no provider can take it).

    The channel's switch decides first. Then providers in failover order: one whose switch stops the
    message is skipped; the first enabled one whose circuit admits a request is chosen. When no
    provider can take it and a switch skipped one, the first skipped provider's switch decides.
    """
    urgent = kill_switch_urgent(message)
    action = switch_action(channel_mode, urgent=urgent)
    if action != SwitchAction.SEND:
        return SwitchStop(action, channel_mode)
    stop: SwitchStop | None = None
    for slot in slots:
        if (kind and slot.kind != kind) or not slot.enabled:
            continue
        mode = provider_mode(slot.name)
        action = switch_action(mode, urgent=urgent)
        if action != SwitchAction.SEND:
            stop = stop or SwitchStop(action, mode, slot.name)
            continue
        if slot.breaker.allow_request():
            return slot
    return stop


def stopped_on(message: Mapping[str, Any], slot: ProviderSlot, *, channel_mode: str, provider_mode: str) -> bool:
    """Whether the channel's or `slot`'s switch now stops `message` (checked again right before booking)."""
    urgent = kill_switch_urgent(message)
    return any(switch_action(mode, urgent=urgent) != SwitchAction.SEND for mode in (channel_mode, provider_mode))


class WorkerSwitches:
    """One channel's switches for its worker: re-read on the consumer thread every couple of seconds
    (`refresh_if_due`), read by the event loop without a query."""

    def __init__(
        self, channel: str, *, board: KillSwitchBoard | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.channel = channel
        self.board = board or KillSwitchBoard(clock=clock)
        self._clock = clock
        self._retry_at = float("-inf")

    def refresh_if_due(self) -> None:
        """Re-read the switches when the board's interval has passed; with the database away the
        modes read last stay in force (tried again one interval later, not before every batch)."""
        if self._clock() < self._retry_at:
            return
        try:
            self.board.refresh()
        except Exception as exc:
            if dependency_of(exc) != "postgresql":
                raise
            self._retry_at = self._clock() + REFRESH_SECONDS
            log.warning("kill switches not refreshed", extra={"channel": self.channel, "error": str(exc)[:200]})

    def choose(
        self, message: Mapping[str, Any], slots: Iterable[ProviderSlot], kind: str | None = None
    ) -> ProviderSlot | SwitchStop | None:
        return choose_provider(
            message,
            slots,
            channel_mode=self.board.cached_mode(self.channel),
            provider_mode=lambda name: self.board.cached_mode(self.channel, name),
            kind=kind,
        )

    def stops(self, message: Mapping[str, Any], slot: ProviderSlot) -> bool:
        return stopped_on(
            message,
            slot,
            channel_mode=self.board.cached_mode(self.channel),
            provider_mode=self.board.cached_mode(self.channel, slot.name),
        )


def apply_switch_stop(outcomes: Outcomes, job: Job, stop: SwitchStop) -> None:
    """Park the job in `notif.<channel>.delayed` (the drain puts it back in its lane) or drop it,
    recorded in the delivery log and the message's producer's outcomes (a campaign counts a drop as
    suppressed). The caller has released the job's dedup claim."""
    STOPPED.labels(outcomes.channel, stop.provider, stop.action).inc()
    if stop.action == SwitchAction.PARK:
        headers = carried_headers(job)
        outcomes.producer.produce(
            channel_topic(outcomes.channel, "delayed"), job.message.key(), job.message.value() or b"", headers
        )
        outcomes.record(job, "parked", reason=stop.reason, provider=stop.provider)
    else:
        outcomes.record(job, "suppressed", reason=stop.reason, provider=stop.provider)
