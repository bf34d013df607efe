"""The headers of a message sent to a DLQ, written in one place for every role that dead-letters.

The triage consumer (`notifications/dlq/triage.py`) and the DLQ admin read them back.
"""

from __future__ import annotations

from typing import Any

import orjson

from notifications.dispatch.messages import Header

#: The message text kept in the `error` header (the full history is in `errors`).
MAX_ERROR_TEXT = 1000
#: Attempts kept in the `errors` header of a dead letter.
MAX_ERRORS_KEPT = 50


def dead_letter_headers(
    *,
    origin_topic: str,
    error_class: str,
    error: str,
    idempotency_key: str | None = None,
    attempt: int | None = None,
    first_attempt_at: float | None = None,
    errors: list[dict[str, Any]] | None = None,
    provider: str | None = None,
    replay: str | None = None,
) -> dict[str, str]:
    """Where the message came from, why it failed, and what the triage needs to file it. `replay`
    (the audit id a replayed message carried) lets triage reopen the entry the replay came from."""
    headers = {
        Header.ORIGIN_TOPIC: origin_topic,
        Header.ERROR_CLASS: error_class,
        Header.ERROR: (error or "")[:MAX_ERROR_TEXT],
    }
    if idempotency_key:
        headers[Header.IDEMPOTENCY_KEY] = idempotency_key
    if attempt is not None:
        headers[Header.ATTEMPT] = str(attempt)
    if first_attempt_at is not None:
        headers[Header.FIRST_ATTEMPT_AT] = f"{first_attempt_at:.3f}"
    if errors is not None:
        headers[Header.ERRORS] = orjson.dumps(errors[-MAX_ERRORS_KEPT:]).decode()
    if provider is not None:
        headers[Header.PROVIDER] = provider
    if replay:
        headers[Header.REPLAY] = replay
    return headers
