"""What the app that produced a message adds to its delivery: halts, its own throttle, sent tallies, outcomes.

The worker knows nothing of campaigns; `campaigns.delivery_hooks` implements `MessageHooks`.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from notifications.dispatch.messages import ChannelMessage


@dataclass(frozen=True)
class Halt:
    """A message the app that produced it stopped: dropped (recorded suppressed with `reason`), or held
    back in the first retry tier (`hold`)."""

    hold: bool
    reason: str


class MessageHooks(Protocol):
    """What the app that produced a message adds to its delivery (campaigns: `campaigns.delivery_hooks`)."""

    def halts(self, messages: Sequence[ChannelMessage]) -> dict[str, Halt]: ...

    def throttle(self, message: ChannelMessage) -> tuple[str, float, int] | None: ...

    def sent_tally(self, message: ChannelMessage) -> str | None: ...

    def record(self, outcomes: list[tuple[str, str, dict]]) -> None: ...


class NoHooks:
    def halts(self, messages: Sequence[ChannelMessage]) -> dict[str, Halt]:
        return {}

    def throttle(self, message: ChannelMessage) -> tuple[str, float, int] | None:
        return None

    def sent_tally(self, message: ChannelMessage) -> str | None:
        return None

    def record(self, outcomes: list[tuple[str, str, dict]]) -> None:
        return None
