"""The push channel over several platforms: routes each device to its platform's adapter (FCM, APNs)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.base import ProviderAdapter
from notifications.providers.errors import InvalidMessageError
from notifications.providers.message_fields import devices_for
from notifications.providers.results import SendResult, combine_results


class PushRouter(ProviderAdapter):
    """Sends a push message through every platform adapter that has devices in it, concurrently, and
    combines the results (sent if any platform delivered; dead tokens of all platforms listed).

    A worker that rate-limits FCM and APNs with separate token buckets should call the platform
    adapters itself (``adapter_for("fcm")`` / ``("apns")``); this router is for callers that do not.
    """

    name = "push"
    channel = "push"

    def __init__(self, adapters: Mapping[str, ProviderAdapter], *, owns_adapters: bool = True) -> None:
        super().__init__()
        self.adapters = dict(adapters)  # platform ("fcm", "apns") -> adapter
        self.owns_adapters = owns_adapters

    @property
    def max_in_flight(self) -> int | None:  # type: ignore[override]
        """The tightest limit of the platforms behind the router (APNs: its HTTP/2 streams), so a
        worker using the router admits no more pushes than that platform really has on the wire."""
        limits = [adapter.max_in_flight for adapter in self.adapters.values() if adapter.max_in_flight]
        return min(limits) if limits else None

    def requests_for(self, message: ChannelMessage) -> int:
        used = [adapter for platform, adapter in self.adapters.items() if devices_for(message, platform)]
        return max((adapter.requests_for(message) for adapter in used), default=1)

    async def _send(self, message: ChannelMessage) -> SendResult:
        targets = [adapter for platform, adapter in self.adapters.items() if devices_for(message, platform)]
        if not targets:
            raise InvalidMessageError(
                "message has no device of a configured push platform", provider=self.name, error_code="no_devices"
            )
        results = await asyncio.gather(*(adapter.send(message) for adapter in targets))
        if len(results) == 1:
            return results[0]
        return combine_results(self.name, results)

    async def aclose(self) -> None:
        if self.owns_adapters:
            await asyncio.gather(*(adapter.aclose() for adapter in self.adapters.values()))
