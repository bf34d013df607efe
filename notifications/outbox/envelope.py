"""The versioned JSON envelope of every event message on `notif.events`."""

import uuid
from datetime import datetime
from typing import Any, NotRequired, TypedDict

ENVELOPE_VERSION = 1

#: Namespace for platform event ids: uuid5(namespace, "<service>:<producer event id>").
EVENT_ID_NAMESPACE = uuid.UUID("6f1c7a52-9a51-4d1c-9b0e-6a3f2f5c1e01")


class EventEnvelope(TypedDict):
    v: int
    id: str
    type: str
    occurred_at: str
    recipient: str
    data: dict[str, Any]
    source: str
    producer_event_id: NotRequired[str]
    #: When the platform accepted the event (ISO 8601, UTC): its delivery-log rows' day. Absent
    #: from envelopes written before it existed (`occurred_at` stands in).
    accepted_at: NotRequired[str]


def platform_event_id(*, service: str, producer_event_id: str) -> uuid.UUID:
    """The same (service, event_id) always maps to the same platform id: the basis of idempotency."""
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{service}:{producer_event_id}")


def build_event_envelope(
    *,
    event_id: uuid.UUID,
    type: str,
    occurred_at: datetime | str,
    recipient: str,
    data: dict[str, Any],
    source: str,
    producer_event_id: str,
    accepted_at: datetime | str | None = None,
) -> EventEnvelope:
    envelope: EventEnvelope = {
        "v": ENVELOPE_VERSION,
        "id": str(event_id),
        "type": type,
        "occurred_at": occurred_at if isinstance(occurred_at, str) else occurred_at.isoformat(),
        "recipient": recipient,
        "data": data,
        "source": source,
        "producer_event_id": producer_event_id,
    }
    if accepted_at is not None:
        envelope["accepted_at"] = accepted_at if isinstance(accepted_at, str) else accepted_at.isoformat()
    return envelope
