"""The ingest request's schema as served: the limits and the notification types in force.

A drf-spectacular postprocessing hook (after `preferences.openapi.describe_recipients`), so
`/api/schema/` states what the ingest accepts today (the enabled types, INGEST_MAX_RECIPIENTS,
INGEST_MAX_BATCH, inline recipients as the identify API takes them) and a request valid by the schema
is accepted.
"""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings
from django.db import DatabaseError

from notifications.models import NotificationType
from preferences.openapi import recipient_id_schema


def _complete_inline_recipient(inline: dict[str, Any], recipient: dict[str, Any] | None) -> None:
    """An inline recipient is an identify request body with its `id`: the same fields, closed."""
    if recipient is None:
        return
    inline["properties"] = {"id": recipient_id_schema(), **copy.deepcopy(recipient["properties"])}
    inline.update(required=["id"], additionalProperties=False)


def describe_ingest(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    schemas = result.get("components", {}).get("schemas", {})
    event, batch = schemas.get("EventInRequest"), schemas.get("EventBatchInRequest")
    if event is None or batch is None:
        return result
    for component in (event, batch):
        component["additionalProperties"] = False  # so one event and a batch never look alike
    event["oneOf"] = [{"required": ["recipients"]}, {"required": ["target"]}]  # one of the two, not both
    recipients = event["properties"]["recipients"]
    recipients.update(minItems=1, maxItems=settings.INGEST_MAX_RECIPIENTS)
    _complete_inline_recipient(recipients["items"]["oneOf"][1], schemas.get("RecipientInRequest"))
    batch["properties"]["events"].update(minItems=1, maxItems=settings.INGEST_MAX_BATCH)
    event["properties"]["data"]["description"] += f" At most {settings.INGEST_MAX_DATA_BYTES} bytes as JSON."
    try:
        keys = sorted(NotificationType.objects.filter(enabled=True).values_list("key", flat=True))
    except DatabaseError:
        return result  # the database is away: the schema still serves, without the list
    if keys:
        event["properties"]["type"]["enum"] = keys
    return result
