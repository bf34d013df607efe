"""The topics API's request bodies as served: closed objects (an unknown field is a 400, so the schema
says so), a drf-spectacular postprocessing hook."""

from __future__ import annotations

from typing import Any

CLOSED = ("TopicInRequest", "SubscribersInRequest")


def describe_topics(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    schemas = result.get("components", {}).get("schemas", {})
    for name in CLOSED:
        if name in schemas:
            schemas[name]["additionalProperties"] = False
    return result
