"""Bulk identify: validate every item, upsert the valid ones in one transaction, report per item.

Shared by ``POST /api/v1/recipients/bulk``; an item is written whole or not at all.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from .identify import PROTECTED, RecipientData, resolve_for_upsert, upsert_resolved
from .recipient_serializers import RecipientItemInSerializer, recipient_data
from .recipient_validation import fast_recipient

__all__ = ["bulk_upsert"]

_TWICE = "This id appears twice."


def _invalid(index: int, external_id: str | None, errors: Any) -> dict[str, Any]:
    return {"index": index, "id": external_id, "status": "invalid", "errors": errors}


def _validate(items: list[Any]) -> tuple[list[tuple[int, RecipientData]], list[dict[str, Any]]]:
    """``(valid items with their index, results of the invalid ones)``; an id's second item is invalid."""
    valid: list[tuple[int, RecipientData]] = []
    invalid: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        data = fast_recipient(item)
        if data is None:
            serializer = RecipientItemInSerializer(data=item)
            if not serializer.is_valid():
                raw_id = item.get("id") if isinstance(item, dict) else None
                invalid.append(_invalid(index, raw_id if isinstance(raw_id, str) else None, serializer.errors))
                continue
            data = recipient_data(serializer.validated_data["id"], serializer.validated_data)
        if data.external_id in seen:
            invalid.append(_invalid(index, data.external_id, {"id": [_TWICE]}))
            continue
        seen.add(data.external_id)
        valid.append((index, data))
    return valid, invalid


def bulk_upsert(items: list[Any]) -> dict[str, Any]:
    """Validate every item, upsert the valid ones in one transaction, and say per item what happened."""
    valid, results = _validate(items)
    with transaction.atomic():
        existing, protected = resolve_for_upsert([data.external_id for _, data in valid])
        if protected:
            results += [_invalid(i, d.external_id, {"id": [PROTECTED]}) for i, d in valid if d.external_id in protected]
            valid = [(i, d) for i, d in valid if d.external_id not in protected]
        upserted = upsert_resolved([data for _, data in valid], existing)
    results += [
        {"index": index, "id": r.external_id, "status": "created" if r.created else "updated"}
        for (index, _), r in zip(valid, upserted, strict=True)
    ]
    results.sort(key=lambda r: r["index"])
    created = sum(1 for r in upserted if r.created)
    return {
        "created": created,
        "updated": len(upserted) - created,
        "invalid": len(results) - len(upserted),
        "results": results,
    }
