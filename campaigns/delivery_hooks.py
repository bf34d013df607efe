"""What campaigns add to the channel workers' delivery of their messages: halts, throttle, progress.

The worker knows nothing of campaigns; it calls these hooks for every message (those without a
campaign in their ``meta`` get nothing), wired in by ``notifications.delivery.wiring``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from campaigns.halt import read_halts
from campaigns.progress import record_outcomes, sent_tally
from campaigns.throttle import throttle_bucket_name, throttle_burst
from notifications.delivery.hooks import Halt
from notifications.dispatch.messages import ChannelMessage

#: A cancelled campaign's messages are dropped (and counted suppressed); a paused one's held back.
HALTS = {
    "cancelled": Halt(hold=False, reason="campaign_cancelled"),
    "paused": Halt(hold=True, reason="campaign_paused"),
}


def _campaign(message: ChannelMessage) -> dict[str, Any] | None:
    meta = message.get("meta") or {}
    return meta if meta.get("campaign_id") else None


class CampaignHooks:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def halts(self, messages: Sequence[ChannelMessage]) -> dict[str, Halt]:
        """{message id: halt} for the messages of cancelled or paused campaigns (one MGET)."""
        campaigns = {m["id"]: str(meta["campaign_id"]) for m in messages if (meta := _campaign(m))}
        if not campaigns:
            return {}
        halted = read_halts(self.client, sorted(set(campaigns.values())))
        return {mid: HALTS[halted[cid]] for mid, cid in campaigns.items() if halted.get(cid) in HALTS}

    def throttle(self, message: ChannelMessage) -> tuple[str, float, int] | None:
        """The campaign's own bucket (name, rate, burst) when it has a throttle (max sends/s)."""
        meta = _campaign(message)
        if meta is None or not meta.get("throttle"):
            return None
        rate = float(meta["throttle"])
        return throttle_bucket_name(meta["campaign_id"]), rate, throttle_burst(rate)

    def sent_tally(self, message: ChannelMessage) -> str | None:
        """The counter the dedup confirm counts this send in (a launched campaign's `sent`; not a test send)."""
        meta = _campaign(message)
        if meta is None or not meta.get("launch_id"):
            return None
        return sent_tally(int(meta["campaign_id"]))

    def record(self, outcomes: list[tuple[str, str, dict]]) -> None:
        """Raises RedisError: the worker settles again later (a campaign completes on these counts)."""
        record_outcomes(outcomes, redis_client=self.client, strict=True)
