"""`POST /api/v1/events` as a plain ASGI handler, for a server running the ASGI application.

The same steps as the WSGI view (`views.admit`, the group commit, `views.accepted`) without Django's
request machinery. A request of the bulk lane (`admission.request_lane`) is served whole by the bulk
process (`bulk_process.py`); any other is admitted on the event loop's default threads (`admit` may
touch the database) and its commit is awaited.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from django.conf import settings

from notifications.ingest.admission import request_lane
from notifications.ingest.bulk_process import bulk_process
from notifications.ingest.group_commit import DatabaseUnavailable, committer
from notifications.ingest.views import UNAVAILABLE, Admitted, Answer, accepted, admit, parse_body
from notifications.priority import Lane
from notifications.process import freeze_startup_heap

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
    authorization, x_api_key = headers.get("authorization", ""), headers.get("x-api-key")
    if request_lane(data) is Lane.BULK:
        return await bulk_process.serve(body, authorization, x_api_key)
    loop = asyncio.get_running_loop()
    admit_call = functools.partial(admit, data, authorization=authorization, x_api_key=x_api_key)
    outcome: Admitted | Answer = await loop.run_in_executor(None, admit_call)
    if isinstance(outcome, Answer):
        return outcome
    try:
        results = await asyncio.wait_for(asyncio.wrap_future(committer.enqueue(outcome.prepared)), COMMIT_TIMEOUT)
    except (DatabaseUnavailable, TimeoutError):
        return UNAVAILABLE
    return accepted(outcome, results)


async def lifespan(receive, send) -> None:
    """The ASGI lifespan protocol: the bulk process starts with the web process and stops with it;
    the start-up heap is left out of later garbage collections."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if settings.PRIORITY_LANES:
                bulk_process.start()
            freeze_startup_heap()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await asyncio.get_running_loop().run_in_executor(None, bulk_process.close)
            await send({"type": "lifespan.shutdown.complete"})
            return


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
