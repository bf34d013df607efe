"""The identify API for producer services (API-key auth): upsert, read and erase recipients by their
external id, and upsert up to ``RECIPIENTS_BULK_MAX`` of them in one transaction."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.ingest.authentication import ApiKeyAuthentication, HasServiceApiKey

from .identify import PROTECTED, ProtectedRecipient, recipients_upsert
from .identify_bulk import bulk_upsert
from .models import EXTERNAL_ID
from .recipient_serializers import (
    EXTERNAL_ID_HELP,
    BulkRecipientsInSerializer,
    BulkResultOutSerializer,
    RecipientInSerializer,
    RecipientOutSerializer,
    recipient_data,
)
from .recipients import recipient_erase, recipient_get
from .serializers import ErrorOutSerializer

TAGS = ["recipients"]

_EXAMPLE = {
    "email": "ana@example.com",
    "first_name": "Ana",
    "phone": "+4915112345678",
    "locale": "de-CH",
    "timezone": "Europe/Zurich",
    "attributes": {"plan": "pro", "country": "CH"},
    "devices": [{"platform": "fcm", "token": "fcm-token-from-the-app"}],
}
_BAD_ID = {"id": [EXTERNAL_ID_HELP]}


class ProducerAPIView(APIView):
    """Producer endpoints: `Authorization: Api-Key <key>` only, JSON in."""

    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasServiceApiKey]
    parser_classes = [JSONParser]


def _conflict(detail: str) -> Response:
    return Response({"detail": detail, "code": "protected_recipient"}, status=status.HTTP_409_CONFLICT)


class RecipientView(ProducerAPIView):
    """One recipient, named by your id for them."""

    @extend_schema(
        tags=TAGS,
        summary="Create or update a recipient (identify)",
        description="Fields you send are set; fields you leave out keep their value (a new recipient starts "
        'them empty); `""` or `null` clears one. `attributes` is merged into the stored attributes (a `null` '
        "value removes a key; `attributes: null` removes them all). `devices` registers push tokens. "
        "201 when the recipient was created, 200 when updated. Field errors are a 400 naming the field; "
        "nothing is written then.",
        request=RecipientInSerializer,
        responses={
            200: RecipientOutSerializer,
            201: RecipientOutSerializer,
            400: OpenApiResponse(description='Field → reasons, e.g. {"phone": ["Enter a valid phone number…"]}'),
            409: ErrorOutSerializer,
        },
        examples=[OpenApiExample("A recipient", value=_EXAMPLE, request_only=True)],
    )
    def put(self, request: Request, external_id: str) -> Response:
        if EXTERNAL_ID.fullmatch(external_id) is None:
            raise serializers.ValidationError(_BAD_ID)
        data = RecipientInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            [result] = recipients_upsert([recipient_data(external_id, data.validated_data)])
        except ProtectedRecipient:
            return _conflict(PROTECTED)
        code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
        return Response(RecipientOutSerializer(recipient_get(external_id)).data, status=code)

    @extend_schema(
        tags=TAGS,
        summary="Read a recipient",
        responses={200: RecipientOutSerializer, 404: ErrorOutSerializer},
    )
    def get(self, request: Request, external_id: str) -> Response:
        recipient = recipient_get(external_id) if EXTERNAL_ID.fullmatch(external_id) else None
        if recipient is None:
            return Response({"detail": "No recipient has this id.", "code": "not_found"}, status=404)
        return Response(RecipientOutSerializer(recipient).data)

    @extend_schema(
        tags=TAGS,
        summary="Erase a recipient",
        description="Removes the profile, devices, preference document, in-app inbox and pending scheduled "
        "messages. Delivery-log rows are kept, pseudonymised (no longer linked to anyone). Events accepted "
        "for the id afterwards reach nobody until it is identified again. 204 when erased, 404 when no "
        "recipient has the id.",
        responses={204: None, 404: ErrorOutSerializer, 409: ErrorOutSerializer},
    )
    def delete(self, request: Request, external_id: str) -> Response:
        try:
            erased = EXTERNAL_ID.fullmatch(external_id) is not None and recipient_erase(external_id=external_id)
        except ProtectedRecipient:
            return _conflict(PROTECTED)
        if not erased:
            return Response({"detail": "No recipient has this id.", "code": "not_found"}, status=404)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RecipientBulkView(ProducerAPIView):
    """Many recipients at once."""

    @extend_schema(
        tags=TAGS,
        summary="Create or update many recipients",
        description="Up to RECIPIENTS_BULK_MAX (1,000) recipient objects, each with its `id` and the fields of "
        "`PUT /api/v1/recipients/{id}`. The valid ones are written in one transaction; each item's result "
        "says `created`, `updated` or `invalid` (with its field errors; nothing of an invalid item is "
        "written). 200 when all were written, 207 when some were invalid. A malformed request (not a "
        "list, too many items) is a 400 and writes nothing.",
        request=BulkRecipientsInSerializer,
        responses={200: BulkResultOutSerializer, 207: BulkResultOutSerializer, 400: OpenApiResponse()},
        examples=[
            OpenApiExample(
                "Two recipients",
                value={"recipients": [{"id": "u-42", **_EXAMPLE}, {"id": "u-43", "email": "bo@example.com"}]},
                request_only=True,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        items = _bulk_items(request.data)
        if items is None:
            data = BulkRecipientsInSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            items = data.validated_data["recipients"]
        outcome = bulk_upsert(items)
        code = status.HTTP_207_MULTI_STATUS if outcome["invalid"] else status.HTTP_200_OK
        return Response(outcome, status=code)  # already BulkResultOutSerializer's shape


def _bulk_items(data: object) -> list | None:
    """The items of a well-formed bulk request (what ``BulkRecipientsInSerializer`` would accept), or
    None: the serializer then says what is wrong. Its ListField of JSONFields re-encodes each item."""
    items = data.get("recipients") if isinstance(data, dict) else None
    if not isinstance(items, list) or not 0 < len(items) <= settings.RECIPIENTS_BULK_MAX or None in items:
        return None
    return items
