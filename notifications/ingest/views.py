"""`POST /api/v1/events`: accept one event or a batch, answer 202 once the outbox rows are committed.

The request path is lean (`ingest_events`): cached key verification, a lean validator in front of
the serializers, the key's quota, and a group commit shared with the process's concurrent requests.
DRF's view class stays for the OpenAPI schema. Why and what it costs: `docs/architecture.md`, "Ingest".
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError, close_old_connections
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, PolymorphicProxySerializer, extend_schema
from prometheus_client import Counter
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.views import APIView

from notifications import api_schema
from notifications.ingest.api_keys import InvalidApiKey, RevokedApiKey, api_keys, raw_key
from notifications.ingest.authentication import ApiKeyAuthentication, HasServiceApiKey
from notifications.ingest.group_commit import DatabaseUnavailable, committer
from notifications.ingest.overload import OverloadGuard
from notifications.ingest.quotas import QuotaExceeded, take_quota
from notifications.ingest.serializers import (
    AcceptedBatchOutSerializer,
    AcceptedEventOutSerializer,
    EventBatchInSerializer,
    EventInSerializer,
)
from notifications.ingest.validation import read_events
from notifications.outbox.services import PublishResult, prepare_events
from notifications.priority import type_priority

EVENTS = Counter("ingest_events_total", "Events by producer service and outcome", ["service", "outcome"])
#: Seconds a producer is asked to wait after a 503 (database away or overloaded).
RETRY_AFTER_UNAVAILABLE = 2

overload = OverloadGuard(commit_seconds=lambda: committer.commit_seconds)


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, for the WSGI view and the ASGI handler alike."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def http_response(self) -> HttpResponse:
        return HttpResponse(self.body, status=self.status, content_type="application/json", headers=self.headers)


@dataclass(frozen=True)
class Admitted:
    """A request that passed every check: its events wait for the group commit."""

    service: str
    prepared: list
    is_batch: bool


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS), headers or {})


def _error(status: int, detail: str, code: str, headers: dict[str, str] | None = None) -> Answer:
    return _json(status, {"detail": detail, "code": code}, headers)


UNAVAILABLE = _error(
    503,
    "The events could not be stored right now; nothing was accepted. Retry with the same event ids.",
    "unavailable",
    {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
)


TOO_LARGE = _error(
    413, f"The body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes; send smaller batches.", "too_large"
)


def _accepted(result: PublishResult, rendered: dict[datetime, str]) -> dict[str, object]:
    """`AcceptedEventOutSerializer`'s representation (its DateTimeField: local time, ISO 8601, Z);
    `rendered` keeps the times already rendered (a batch's new events share one)."""
    accepted_at = rendered.get(result.accepted_at)
    if accepted_at is None:
        accepted_at = timezone.localtime(result.accepted_at).isoformat()
        if accepted_at.endswith("+00:00"):
            accepted_at = accepted_at[:-6] + "Z"
        rendered[result.accepted_at] = accepted_at
    return {
        "id": str(result.id),
        "event_id": result.producer_event_id,
        "accepted_at": accepted_at,
        "duplicate": result.duplicate,
    }


def parse_body(body: bytes) -> object:
    """The body's JSON value, or the JSONDecodeError (`admit` answers it after the key check)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return exc


def admit(data: object, *, authorization: str, x_api_key: str | None) -> Admitted | Answer:
    """Everything before the commit: overload, key, body (`data`: its `parse_body`), quota. An
    Answer ends the request (a 503 while the database is away, never a 500)."""
    try:
        return _admit(data, authorization=authorization, x_api_key=x_api_key)
    except (OperationalError, InterfaceError):
        close_old_connections()
        return UNAVAILABLE


def _admit(data: object, *, authorization: str, x_api_key: str | None) -> Admitted | Answer:
    busy = overload.reason()
    if busy is not None:
        return _error(503, f"Overloaded: {busy}. Retry later.", "overloaded", {"Retry-After": "5"})
    try:
        key = api_keys.verify(raw_key(authorization, x_api_key))
    except InvalidApiKey:
        return _error(401, "Invalid API key.", "authentication_failed", {"WWW-Authenticate": "Api-Key"})
    except RevokedApiKey:
        return _error(403, "This API key has been revoked.", "api_key_revoked")
    if isinstance(data, orjson.JSONDecodeError):
        return _error(400, f"JSON parse error - {data}", "parse_error")
    try:
        events, is_batch = read_events(data, known_type=type_priority.known)
    except ValidationError as exc:
        EVENTS.labels(key.service, "invalid").inc()
        return _json(400, exc.detail)
    try:
        take_quota(key, len(events))
    except QuotaExceeded as exc:
        EVENTS.labels(key.service, "throttled").inc(len(events))
        return _error(429, exc.detail, "throttled", {"Retry-After": str(exc.retry_after)})
    return Admitted(key.service, prepare_events(events, service=key.service, now=timezone.now()), is_batch)


def accepted(admitted: Admitted, results: list[PublishResult]) -> Answer:
    """The 202 of a committed request."""
    duplicates = sum(1 for r in results if r.duplicate)
    EVENTS.labels(admitted.service, "accepted").inc(len(results) - duplicates)
    if duplicates:
        EVENTS.labels(admitted.service, "duplicate").inc(duplicates)
    rendered: dict[datetime, str] = {}
    if admitted.is_batch:
        return _json(202, {"events": [_accepted(r, rendered) for r in results]})
    return _json(202, _accepted(results[0], rendered))


def admit_and_commit(data: object, *, authorization: str, x_api_key: str | None) -> Answer:
    """The whole request on the calling thread: admit, wait for the group commit, 202."""
    outcome = admit(data, authorization=authorization, x_api_key=x_api_key)
    if isinstance(outcome, Answer):
        return outcome
    try:
        results = committer.submit(outcome.prepared)
    except (DatabaseUnavailable, concurrent.futures.TimeoutError):
        return UNAVAILABLE
    return accepted(outcome, results)


def ingest_events(request: HttpRequest) -> HttpResponse:
    """The request on a WSGI thread."""
    try:
        body = request.body
    except RequestDataTooBig:
        return TOO_LARGE.http_response()
    return admit_and_commit(
        parse_body(body),
        authorization=request.headers.get("Authorization", ""),
        x_api_key=request.headers.get("X-Api-Key"),
    ).http_response()


class EventIngestView(APIView):
    """Serves `POST /api/v1/events` through `ingest_events`; the DRF parts document it."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasServiceApiKey]
    parser_classes = [JSONParser]
    schema = api_schema.RequiredBodySchema()

    def dispatch(self, request, *args, **kwargs):
        if request.method != "POST":
            return super().dispatch(request, *args, **kwargs)  # DRF's 405 and OPTIONS
        return ingest_events(request)

    @extend_schema(
        summary="Publish an event (or a batch of events)",
        description=(
            'Send one event object, or `{"events": [...]}` with up to INGEST_MAX_BATCH (default 500) '
            "events. Authenticate with `Authorization: Api-Key <key>`. The answer is 202 as soon as "
            "the events are durably queued; delivery is asynchronous. Re-sending an `event_id` within "
            "ACCEPTED_EVENT_RETENTION_DAYS (default 30 days) of its acceptance returns the original "
            "acceptance with `duplicate: true` and creates nothing. Over the key's quota: "
            "429 with Retry-After, nothing accepted. While the platform sheds load or the database is "
            "away: 503 with Retry-After, nothing accepted. With `target` instead of `recipients` the event "
            "goes to a topic's subscribers or an audience predicate, in batches (a fanout, shown and "
            "controlled like a campaign in the admin)."
        ),
        request=PolymorphicProxySerializer(
            component_name="EventOrBatch",
            serializers=[EventInSerializer, EventBatchInSerializer],
            resource_type_field_name=None,
        ),
        responses={
            202: PolymorphicProxySerializer(
                component_name="AcceptedEventOrBatch",
                serializers=[AcceptedEventOutSerializer, AcceptedBatchOutSerializer],
                resource_type_field_name=None,
            ),
            401: OpenApiResponse(description="No API key, or not a valid one (`WWW-Authenticate: Api-Key`)."),
            403: OpenApiResponse(description="The API key was revoked."),
            413: OpenApiResponse(description="The body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE; nothing accepted."),
            429: OpenApiResponse(description="Over the key's quota; nothing accepted. Retry after `Retry-After`."),
            503: OpenApiResponse(description="Overloaded or the database is away; nothing accepted (`Retry-After`)."),
        },
        examples=[
            OpenApiExample(
                "One event",
                value={
                    "event_id": "order-1234-shipped",
                    "type": "order.shipped",
                    "recipients": ["42"],
                    "data": {"order_number": "1234"},
                },
                request_only=True,
            ),
            OpenApiExample(
                "An event with an inline recipient (created or updated with the event)",
                value={
                    "event_id": "order-1235-shipped",
                    "type": "order.shipped",
                    "recipients": [{"id": "u-42", "email": "ana@example.com", "locale": "de-CH"}, "u-43"],
                    "data": {"order_number": "1235"},
                },
                request_only=True,
            ),
            OpenApiExample(
                "A fanout event to a topic's subscribers (sent in batches, like a campaign)",
                value={
                    "event_id": "show-1234-episode-2",
                    "type": "show.new_episode",
                    "target": {"topic": "show:1234", "exclude": ["u-42"]},
                    "data": {"episode": "S1E2"},
                },
                request_only=True,
            ),
            OpenApiExample(
                "A batch",
                value={
                    "events": [
                        {"event_id": "order-1234-shipped", "type": "order.shipped", "recipients": ["42"]},
                        {"event_id": "order-1235-shipped", "type": "order.shipped", "recipients": ["43", "44"]},
                    ]
                },
                request_only=True,
            ),
            OpenApiExample(
                "Accepted",
                value={
                    "id": "0b6f1f8e-3c1e-4a59-9a52-2f3c4c1d9a10",
                    "event_id": "order-1234-shipped",
                    "accepted_at": "2026-01-01T12:00:00Z",
                    "duplicate": False,
                },
                response_only=True,
                status_codes=["202"],
            ),
        ],
    )
    def post(self, request):
        return ingest_events(request._request)
