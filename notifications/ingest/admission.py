"""Which lane an ingest request is served in: a request whose events are all of bulk types by the bulk
process (`bulk_process.py`) at a lower CPU priority; any other on the web process's threads. Why:
`docs/architecture.md`, "Ingest"."""

from __future__ import annotations

from typing import Any

from notifications.priority import Lane, lane_for, type_priority


def request_lane(body: Any) -> Lane:
    """The lane of a parsed request body: bulk when every event names a type already known (cached,
    no query) to be bulk; priority for anything else, a body not yet valid included."""
    events = body.get("events") if isinstance(body, dict) and "events" in body else [body]
    if not isinstance(events, list) or not events:
        return Lane.PRIORITY
    for event in events:
        if not isinstance(event, dict):
            return Lane.PRIORITY
        priority = type_priority.cached(event.get("type"))
        if priority is None or lane_for(priority) is not Lane.BULK:
            return Lane.PRIORITY
    return Lane.BULK
