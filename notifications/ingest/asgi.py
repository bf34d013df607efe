"""`POST /api/v1/events` as a plain ASGI handler, for a server running the ASGI application.

The same steps as the WSGI view (`views.admit`, the group commit, `views.accepted`) without Django's
request machinery; `admit` runs on a thread (it may touch the database), the commit is awaited.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings

from notifications.ingest.group_commit import DatabaseUnavailable, committer
from notifications.ingest.views import UNAVAILABLE, Admitted, Answer, accepted, admit

#: Seconds a request waits for its group commit before it answers 503 (nothing accepted).
COMMIT_TIMEOUT = 30.0
TOO_LARGE = Answer(413, b'{"detail": "The request body is too large.", "code": "too_large"}')


async def ingest_events_asgi(scope: dict[str, Any], receive, send) -> None:
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    body = await _read_body(receive)
    if body is None:
        outcome: Admitted | Answer = TOO_LARGE
    else:
        outcome = await asyncio.to_thread(
            admit, body, authorization=headers.get("authorization", ""), x_api_key=headers.get("x-api-key")
        )
    if isinstance(outcome, Admitted):
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(committer.enqueue(outcome.prepared)), COMMIT_TIMEOUT)
        except (DatabaseUnavailable, TimeoutError):
            outcome = UNAVAILABLE
        else:
            outcome = accepted(outcome, results)
    await send(
        {
            "type": "http.response.start",
            "status": outcome.status,
            "headers": [(b"content-type", b"application/json")]
            + [(k.lower().encode(), v.encode()) for k, v in outcome.headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": outcome.body})


async def _read_body(receive) -> bytes | None:
    """The request body, or None when it is larger than DATA_UPLOAD_MAX_MEMORY_SIZE."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
