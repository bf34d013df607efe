"""A channel's send capacity: the sends per second its providers' contracts allow together."""

from collections.abc import Iterable

from notifications.channels import Channel


def channel_capacity(channel: str, providers: Iterable[tuple[str, float]]) -> float | None:
    """`providers`: (kind, rate) of the channel's enabled providers in failover order. Push sends to
    FCM and APNs in parallel (the first provider of each kind counts); any other channel sends
    through its first provider (the others are failovers). None without an enabled provider."""
    first: dict[str, float] = {}
    for kind, rate in providers:
        first.setdefault(kind if channel == Channel.PUSH else "", rate)
    return sum(first.values()) if first else None
