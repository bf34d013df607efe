"""`POST /api/v1/events`: accept one event or a batch, answer 202 once the outbox rows are committed."""

from drf_spectacular.utils import OpenApiExample, PolymorphicProxySerializer, extend_schema
from rest_framework import status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.ingest.authentication import ApiKeyAuthentication, HasServiceApiKey
from notifications.ingest.serializers import (
    AcceptedBatchOutSerializer,
    AcceptedEventOutSerializer,
    EventBatchInSerializer,
    EventInSerializer,
)
from notifications.outbox.services import EventInput, publish_events


class EventIngestView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasServiceApiKey]
    parser_classes = [JSONParser]

    @extend_schema(
        summary="Publish an event (or a batch of events)",
        description=(
            'Send one event object, or `{"events": [...]}` with up to INGEST_MAX_BATCH (default 500) '
            "events. Authenticate with `Authorization: Api-Key <key>`. The answer is 202 as soon as "
            "the events are durably queued; delivery is asynchronous. Re-sending an `event_id` returns "
            "the original acceptance with `duplicate: true` and creates nothing."
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
            )
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
            )
        ],
    )
    def post(self, request):
        body = request.data
        is_batch = isinstance(body, dict) and "events" in body
        if isinstance(body, list):
            return Response(
                {"non_field_errors": ['Send one event object, or {"events": [...]} for a batch.']},
                status=status.HTTP_400_BAD_REQUEST,
            )
        serializer = (EventBatchInSerializer if is_batch else EventInSerializer)(data=body)
        serializer.is_valid(raise_exception=True)
        items = serializer.validated_data["events"] if is_batch else [serializer.validated_data]
        results = publish_events(
            events=[
                EventInput(
                    type=item["type"],
                    recipients=item["recipients"],
                    data=item.get("data") or {},
                    event_id=item.get("event_id"),
                    occurred_at=item.get("occurred_at"),
                )
                for item in items
            ],
            service=request.auth.service,
        )
        if is_batch:
            return Response(AcceptedBatchOutSerializer({"events": results}).data, status=status.HTTP_202_ACCEPTED)
        return Response(AcceptedEventOutSerializer(results[0]).data, status=status.HTTP_202_ACCEPTED)
