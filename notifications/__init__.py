"""The notification core: outbox and relay, Kafka bus, ingest API, dispatcher and delivery.

`notifications.publish(...)` is the in-process way to emit an event: it writes outbox rows in the
caller's transaction, so a rolled-back transaction publishes nothing.
"""

from typing import Any


def publish(**kwargs: Any) -> Any:
    """Publish an event through the transactional outbox (see `outbox.services.publish_event`)."""
    from notifications.outbox.services import publish_event

    return publish_event(**kwargs)
