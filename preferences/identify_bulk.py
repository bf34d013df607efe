"""Bulk identify: validate every item, upsert the valid ones in one transaction, report per item.

Shared by ``POST /api/v1/recipients/bulk``; an item is written whole or not at all.
"""

from __future__ import annotations

from typing import Any

from .identify import PROTECTED, RecipientData, protected_recipients, recipients_upsert
from .recipient_ids import resolve_recipients
from .recipient_serializers import RecipientItemInSerializer, recipient_data
from .recipient_validation import fast_recipient

__all__ = ["bulk_upsert"]


def bulk_upsert(items: list[Any]) -> dict[str, Any]:
    """Validate every item, upsert the valid ones in one transaction, and say per item what happened."""
    results: list[dict[str, Any]] = []
    valid: list[tuple[int, RecipientData]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        data = fast_recipient(item)
        if data is not None:
            if data.external_id in seen:
                results.append({"index": index, "id": data.external_id, "errors": {"id": ["This id appears twice."]}})
                continue
            seen.add(data.external_id)
            valid.append((index, data))
            continue
        serializer = RecipientItemInSerializer(data=item)
        if not serializer.is_valid():
            raw_id = item.get("id") if isinstance(item, dict) else None
            results.append(
                {"index": index, "id": raw_id if isinstance(raw_id, str) else None, "errors": serializer.errors}
            )
            continue
        external_id = serializer.validated_data["id"]
        if external_id in seen:
            results.append({"index": index, "id": external_id, "errors": {"id": ["This id appears twice."]}})
            continue
        seen.add(external_id)
        valid.append((index, recipient_data(external_id, serializer.validated_data)))
    protected = protected_recipients(resolve_recipients([data.external_id for _, data in valid]))
    if protected:
        results += [
            {"index": i, "id": d.external_id, "errors": {"id": [PROTECTED]}}
            for i, d in valid
            if d.external_id in protected
        ]
        valid = [(i, d) for i, d in valid if d.external_id not in protected]
    for result in results:
        result["status"] = "invalid"
    upserted = recipients_upsert([data for _, data in valid])
    results += [
        {"index": index, "id": r.external_id, "status": "created" if r.created else "updated"}
        for (index, _), r in zip(valid, upserted, strict=True)
    ]
    results.sort(key=lambda r: r["index"])
    created = sum(1 for r in results if r["status"] == "created")
    return {
        "created": created,
        "updated": len(upserted) - created,
        "invalid": len(results) - len(upserted),
        "results": results,
    }
