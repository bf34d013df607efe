"""The dispatcher tests' small language: `envelope` (given), `dispatch` (when), `out` and `statuses` (then)."""

import uuid

import orjson
from confluent_kafka import Producer

from notifications.bus.config import producer_config
from notifications.bus.topics import channel_topic, delivery_topic
from notifications.dispatch.dispatcher import Dispatcher
from notifications.models import DeliveryLog
from notifications.priority import Lane
from notifications.redis_client import get_redis
from preferences.models import Device, PreferenceDocument, RecipientProfile
from tests.kafka_helpers import consume, consume_matching, produce_raw


def make_user(django_user_model, *, phone="+4915112345678", locale="en", tz="UTC", device=True, document=None):
    user = django_user_model.objects.create(username=f"u{uuid.uuid4().hex[:8]}", email=f"{uuid.uuid4().hex[:8]}@ex.com")
    RecipientProfile.objects.create(user=user, phone=phone or "", locale=locale, timezone=tz)
    if device:
        Device.objects.create(user=user, platform="fcm", token=f"tok-{uuid.uuid4().hex}")
    if document is not None:
        PreferenceDocument.objects.create(user=user, document=document, version=1)
    return user


def envelope(type_key: str, user_id: int, data=None, event_id=None) -> dict:
    return {
        "v": 1,
        "id": event_id or str(uuid.uuid4()),
        "type": type_key,
        "occurred_at": "2026-11-25T10:00:00+00:00",
        "recipient": str(user_id),
        "data": data or {"order": "A-1"},
        "source": "test",
    }


def dispatch(fresh_topic, items: list, *, clock=None) -> Dispatcher:
    """Produce `items` (envelopes or raw bytes) to a fresh topic, consume them for real, dispatch."""
    produce_raw(fresh_topic, [("k", v if isinstance(v, bytes) else orjson.dumps(v)) for v in items])
    messages = consume(fresh_topic, expected=len(items), timeout=20)
    assert len(messages) == len(items)
    kwargs = {"clock": clock} if clock else {}
    dispatcher = Dispatcher(producer=Producer(producer_config()), redis_client=get_redis(), **kwargs)
    try:
        dispatcher.handle_batch(messages).result()  # the delivery-log rows are stored
    finally:
        dispatcher.close()
    return dispatcher


def out(channel: str, event_id: str, suffix: str = "", expected: int = 1, lane: Lane = Lane.PRIORITY) -> list[dict]:
    messages = consume_matching(
        channel_topic(channel, suffix) if suffix else delivery_topic(channel, lane),
        lambda m: orjson.loads(m.value()).get("event_id") == event_id,
        expected=expected,
        timeout=10 if expected else 2,
    )
    return [orjson.loads(m.value()) for m in messages]


def statuses(event_id: str) -> dict[str, tuple[str, str]]:
    return {row.channel: (row.status, row.reason) for row in DeliveryLog.objects.filter(event_id=event_id)}
