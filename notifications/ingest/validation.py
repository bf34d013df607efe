"""Reading an ingest request's events: a lean check for the common, valid request, DRF for the rest.

The serializers (`serializers.py`) stay the definition of what is valid and of every error message
(and of the OpenAPI schema). `read_events` first tries `fast_events`, which accepts only what the
serializers accept and gives the same data (a property test checks both); anything it does not
accept goes through the serializers, which produce the field-keyed 400 or, should the lean check be
stricter than them somewhere, the validated data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from django.conf import settings
from rest_framework.exceptions import ValidationError

from notifications.ingest.serializers import EventBatchInSerializer, EventInSerializer
from notifications.outbox.services import EventInput
from preferences.identify import PROTECTED, protected_recipients
from preferences.models import EXTERNAL_ID
from preferences.recipient_ids import resolve_recipients

_RECIPIENT = EXTERNAL_ID
_EVENT_FIELDS = frozenset({"event_id", "type", "recipients", "data", "occurred_at"})
NOT_AN_EVENT = 'Send one event object, or {"events": [...]} for a batch.'


def read_events(body: Any, *, known_type: Callable[[str], bool]) -> tuple[list[EventInput], bool]:
    """(events, whether the body was a batch). Raises rest_framework's ValidationError with the
    field-keyed errors of the serializers."""
    if isinstance(body, list):
        raise ValidationError({"non_field_errors": [NOT_AN_EVENT]})
    is_batch = isinstance(body, dict) and "events" in body
    events = fast_events(body, is_batch=is_batch, known_type=known_type)
    if events is not None:
        return events, is_batch
    serializer = (EventBatchInSerializer if is_batch else EventInSerializer)(data=body)
    serializer.is_valid(raise_exception=True)
    items = serializer.validated_data["events"] if is_batch else [serializer.validated_data]
    events = [
        EventInput(
            type=item["type"],
            recipients=[r if isinstance(r, str) else r.external_id for r in item.get("recipients", ())],
            data=item.get("data") or {},
            event_id=item.get("event_id"),
            occurred_at=item.get("occurred_at"),
            inline=[r for r in item.get("recipients", ()) if not isinstance(r, str)],
            target=item.get("target"),
        )
        for item in items
    ]
    _refuse_protected(events, is_batch)
    return events, is_batch


def _refuse_protected(events: list[EventInput], is_batch: bool) -> None:
    """Inline recipients may not name a staff account (the identify API's rule); checked here, with
    the field's path, so the group commit never meets one."""
    inline = {r.external_id for event in events for r in event.inline}
    if not inline:
        return
    protected = protected_recipients(resolve_recipients(inline))
    errors: dict = {}
    for index, event in enumerate(events):
        refused = {
            position: {"id": [PROTECTED]}
            for position, recipient in enumerate(event.recipients)
            if recipient in protected and any(r.external_id == recipient for r in event.inline)
        }
        if refused:
            errors[index] = {"recipients": refused}
    if errors:
        raise ValidationError({"events": errors} if is_batch else errors[0])


def fast_events(body: Any, *, is_batch: bool, known_type: Callable[[str], bool]) -> list[EventInput] | None:
    """The events of a plainly valid body, or None (then the serializers decide). Conservative: a
    value the serializers would convert (a number as `event_id`, a date) is left to them."""
    if is_batch:
        if body.keys() != {"events"}:
            return None  # an unknown field beside `events`: the serializer names it
        items = body.get("events")
        if not isinstance(items, list) or not items or len(items) > settings.INGEST_MAX_BATCH:
            return None
    else:
        items = [body]
    events = []
    limits = (settings.INGEST_MAX_RECIPIENTS, settings.INGEST_MAX_DATA_BYTES)  # read once, not per event
    for item in items:
        event = _fast_event(item, known_type, *limits)
        if event is None:
            return None
        events.append(event)
    return events


def _fast_event(
    item: Any, known_type: Callable[[str], bool], max_recipients: int, max_data_bytes: int
) -> EventInput | None:
    if not isinstance(item, dict) or "occurred_at" in item or not item.keys() <= _EVENT_FIELDS:
        return None
    event_id = item.get("event_id")
    if "event_id" in item and not (isinstance(event_id, str) and 0 < len(event_id) <= 200 and _trimmed(event_id)):
        return None
    type_key = item.get("type")
    if not (isinstance(type_key, str) and 0 < len(type_key) <= 100 and _trimmed(type_key) and known_type(type_key)):
        return None
    recipients = item.get("recipients")
    if not isinstance(recipients, list) or not recipients or len(recipients) > max_recipients:
        return None
    for recipient in recipients:
        if not (isinstance(recipient, str) and _RECIPIENT.fullmatch(recipient)):
            return None
    data = item.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        return None
    if data and len(orjson.dumps(data)) > max_data_bytes:
        return None
    return EventInput(type=type_key, recipients=list(dict.fromkeys(recipients)), data=data, event_id=event_id)


def _trimmed(value: str) -> bool:
    """The serializers strip surrounding whitespace; such values are left to them."""
    return value == value.strip()
