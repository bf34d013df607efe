"""`POST /api/v1/events` as a plain ASGI handler, for a server running the ASGI application.

The same steps as the WSGI view (`views.admit`, the group commit, `views.accepted`) without Django's
request machinery; `admit` runs on a thread of the request's lane (`admission.py`; it may touch the
database), the commit is awaited.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from django.conf import settings

from notifications.ingest.admission import executors, request_lane
from notifications.ingest.group_commit import DatabaseUnavailable, committer
from notifications.ingest.views import UNAVAILABLE, Admitted, Answer, accepted, admit, parse_body

#: Seconds a request waits for its group commit before it answers 503 (nothing accepted).
COMMIT_TIMEOUT = 30.0
TOO_LARGE = Answer(413, b'{"detail": "The request body is too large.", "code": "too_large"}')


async def ingest_events_asgi(scope: dict[str, Any], receive, send) -> None:
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    body = await _read_body(receive)
    outcome = TOO_LARGE if body is None else await _admit_and_commit(body, headers)
    await send(
        {
            "type": "http.response.start",
            "status": outcome.status,
            "headers": [(b"content-type", b"application/json")]
            + [(k.lower().encode(), v.encode()) for k, v in outcome.headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": outcome.body})


async def _admit_and_commit(body: bytes, headers: dict[str, str]) -> Answer:
    data = parse_body(body)
    loop = asyncio.get_running_loop()
    executor = executors.for_lane(request_lane(data))
    admit_call = functools.partial(
        admit, data, authorization=headers.get("authorization", ""), x_api_key=headers.get("x-api-key")
    )
    outcome: Admitted | Answer = await loop.run_in_executor(executor, admit_call)
    if isinstance(outcome, Answer):
        return outcome
    try:
        results = await asyncio.wait_for(asyncio.wrap_future(committer.enqueue(outcome.prepared)), COMMIT_TIMEOUT)
    except (DatabaseUnavailable, TimeoutError):
        return UNAVAILABLE
    if executor is None:
        return accepted(outcome, results)
    return await loop.run_in_executor(executor, accepted, outcome, results)  # a bulk batch's 202 is long


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
