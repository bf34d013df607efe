"""Kill switches as the dispatcher sees them: re-read every couple of seconds, so a change in the
admin takes effect within `REFRESH_SECONDS` without a restart."""

import time
from collections.abc import Callable

from notifications.models import KillSwitch, KillSwitchMode

#: A kill switch must apply within 5 s of the admin change; 2 s leaves room for a slow batch in between.
REFRESH_SECONDS = 2.0


class KillSwitchBoard:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._modes: dict[tuple[str, str], str] = {}
        self._loaded_at = float("-inf")

    def refresh(self, *, force: bool = False) -> None:
        now = self._clock()
        if force or now - self._loaded_at >= REFRESH_SECONDS:
            self._modes = {(k.channel, k.provider): k.mode for k in KillSwitch.objects.all()}
            self._loaded_at = now

    def channel_mode(self, channel: str) -> str:
        self.refresh()
        return self._modes.get((channel, ""), KillSwitchMode.NORMAL)

    def provider_mode(self, channel: str, provider: str) -> str:
        self.refresh()
        return self._modes.get((channel, provider), KillSwitchMode.NORMAL)

    def cached_mode(self, channel: str, provider: str = "") -> str:
        """The mode as last read, without a query (for callers that must not touch the database,
        such as a worker's event loop; they call `refresh` elsewhere)."""
        return self._modes.get((channel, provider), KillSwitchMode.NORMAL)
