"""Thin DRF views of the end-user API and the one-click unsubscribe endpoint.

Every ``/me/…`` view works on ``request.user`` only: another user's device or message id is a 404.
Business rules live in :mod:`preferences.services`; reads in :mod:`preferences.selectors`.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import translation
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from notifications.models import MANDATORY_CATEGORIES, Category

from . import centre, selectors, services
from .authentication import BearerTokenAuthentication, TokenScopeAllows
from .models import Device, InboxMessage, RecipientProfile
from .serializers import (
    DeviceInSerializer,
    DeviceOutSerializer,
    ErrorOutSerializer,
    InboxMessageOutSerializer,
    InboxPageOutSerializer,
    InboxReadAllInSerializer,
    InboxReadAllOutSerializer,
    PreferenceDocumentSerializer,
    PreferencesOutSerializer,
    ProfileSerializer,
    UnsubscribeOutSerializer,
)
from .state import PreferenceState
from .unsubscribe import InvalidUnsubscribeToken, UnsubscribeTokenExpired, read_unsubscribe_token

logger = logging.getLogger(__name__)

TAGS = ["me"]


def _as_drf_error(exc: DjangoValidationError) -> serializers.ValidationError:
    if hasattr(exc, "error_dict"):
        return serializers.ValidationError(exc.message_dict)
    return serializers.ValidationError({"non_field_errors": exc.messages})


class MeAPIView(APIView):
    """Base of the ``/me/…`` views: JSON in, authenticated user only: an end-user token (Bearer) or
    the project's default authentication. ``token_scope`` is the scope a token needs."""

    parser_classes = [JSONParser]
    authentication_classes = [BearerTokenAuthentication, *api_settings.DEFAULT_AUTHENTICATION_CLASSES]
    permission_classes = [*api_settings.DEFAULT_PERMISSION_CLASSES, TokenScopeAllows]
    token_scope = "preferences"  # noqa: S105 - a scope name, not a secret


# --- preferences -----------------------------------------------------------------------------


def _preferences_response(state: PreferenceState, *, status_code: int = status.HTTP_200_OK) -> Response:
    response = Response({"version": state.version, "document": state.document}, status=status_code)
    response["ETag"] = f'"{state.version}"'
    return response


def _if_match_version(request: Request) -> int | None:
    raw = request.headers.get("If-Match", "").strip()
    if not raw or raw == "*":
        return None
    raw = raw.removeprefix("W/").strip('"')
    try:
        return int(raw)
    except ValueError:
        raise serializers.ValidationError({"If-Match": ["must be the version (ETag) from a previous GET"]}) from None


_PREFERENCES_DESCRIPTION = (
    "Missing entries mean the notification type's default (opted in on its default channels). "
    "`categories.security.*` cannot be false. Validation errors are keyed by the JSON path of the bad "
    'field, e.g. `{"categories.marketing.push": ["must be boolean"]}`. Send `If-Match: "<version>"` '
    "to refuse the write (412) when the document changed since you read it."
)


class MyPreferencesView(MeAPIView):
    """The signed-in user's preference document (opt-outs, global mute, quiet hours, frequency caps)."""

    @extend_schema(tags=TAGS, summary="My preference document", responses=PreferencesOutSerializer)
    def get(self, request: Request) -> Response:
        return _preferences_response(selectors.preferences_get(request.user.pk))

    def _write(self, request: Request, *, partial: bool) -> Response:
        try:
            state = services.preferences_update(
                user=request.user, document=request.data, partial=partial, expected_version=_if_match_version(request)
            )
        except DjangoValidationError as exc:
            raise _as_drf_error(exc) from exc
        except services.PreferenceVersionConflict as exc:
            return Response(
                {"detail": str(exc), "code": "version_conflict", "version": exc.current_version},
                status=status.HTTP_412_PRECONDITION_FAILED,
            )
        return _preferences_response(state)

    @extend_schema(
        tags=TAGS,
        summary="Replace my preference document",
        description=_PREFERENCES_DESCRIPTION,
        request=PreferenceDocumentSerializer,
        responses={200: PreferencesOutSerializer, 400: OpenApiTypes.OBJECT, 412: ErrorOutSerializer},
    )
    def put(self, request: Request) -> Response:
        return self._write(request, partial=False)

    @extend_schema(
        tags=TAGS,
        summary="Change part of my preference document (JSON Merge Patch)",
        description=_PREFERENCES_DESCRIPTION
        + " Objects are merged recursively (RFC 7396); `null` removes an entry (back to the default).",
        request=PreferenceDocumentSerializer,
        responses={200: PreferencesOutSerializer, 400: OpenApiTypes.OBJECT, 412: ErrorOutSerializer},
    )
    def patch(self, request: Request) -> Response:
        return self._write(request, partial=True)


# --- devices ---------------------------------------------------------------------------------


class MyDevicesView(MeAPIView):
    """The signed-in user's push devices (FCM / APNs tokens)."""

    @extend_schema(tags=TAGS, summary="My active push devices", responses=DeviceOutSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(DeviceOutSerializer(selectors.devices_for_user(request.user), many=True).data)

    @extend_schema(
        tags=TAGS,
        summary="Register a push token",
        description="Registering a token again refreshes it; a token registered by another account moves to you.",
        request=DeviceInSerializer,
        responses={201: DeviceOutSerializer},
    )
    def post(self, request: Request) -> Response:
        data = DeviceInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            device = services.device_register(user=request.user, **data.validated_data)
        except DjangoValidationError as exc:
            raise _as_drf_error(exc) from exc
        return Response(DeviceOutSerializer(device).data, status=status.HTTP_201_CREATED)


class MyDeviceView(MeAPIView):
    """One of the signed-in user's push devices."""

    @extend_schema(tags=TAGS, summary="Unregister a push device", responses={204: None, 404: ErrorOutSerializer})
    def delete(self, request: Request, pk: int) -> Response:
        try:
            services.device_unregister(user=request.user, device_id=pk)
        except Device.DoesNotExist:
            raise Http404 from None
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- in-app inbox ----------------------------------------------------------------------------


class InboxCursorPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class InboxQuerySerializer(serializers.Serializer):
    unread = serializers.BooleanField(required=False, default=False, help_text="Only unread messages.")
    cursor = serializers.CharField(
        required=False, allow_blank=True, help_text="Opaque cursor from `next` / `previous`."
    )
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=100, help_text="Default 20.")


class MyNotificationsView(MeAPIView):
    """The signed-in user's in-app inbox."""

    token_scope = "inbox"  # noqa: S105 - a scope name, not a secret

    @extend_schema(
        tags=TAGS,
        summary="My in-app inbox, newest first",
        parameters=[InboxQuerySerializer],
        responses={200: InboxPageOutSerializer, 404: OpenApiResponse(description="Not a valid cursor.")},
    )
    def get(self, request: Request) -> Response:
        # A plain dict: DRF reads an empty form value (`?page_size=`) as "not sent", this is a 400.
        query = InboxQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        queryset = selectors.inbox_for_user(request.user, unread_only=query.validated_data["unread"])
        paginator = InboxCursorPagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return Response(
            {
                "next": paginator.get_next_link(),
                "previous": paginator.get_previous_link(),
                "unread_count": selectors.inbox_unread_count(request.user),
                "results": InboxMessageOutSerializer(page, many=True).data,
            }
        )


class MyNotificationReadView(MeAPIView):
    """Mark one in-app message read."""

    token_scope = "inbox"  # noqa: S105 - a scope name, not a secret

    @extend_schema(
        tags=TAGS,
        summary="Mark one message read",
        request=None,
        responses={200: InboxMessageOutSerializer, 404: ErrorOutSerializer},
    )
    def post(self, request: Request, pk: int) -> Response:
        try:
            message = services.inbox_mark_read(user=request.user, message_id=pk)
        except InboxMessage.DoesNotExist:
            raise Http404 from None
        return Response(InboxMessageOutSerializer(message).data)


class MyNotificationsReadAllView(MeAPIView):
    """Mark every unread in-app message read."""

    token_scope = "inbox"  # noqa: S105 - a scope name, not a secret

    @extend_schema(
        tags=TAGS,
        summary="Mark all my messages read",
        request=InboxReadAllInSerializer,
        responses={200: InboxReadAllOutSerializer},
    )
    def post(self, request: Request) -> Response:
        data = InboxReadAllInSerializer(data=request.data)  # no body: {}; `false` or `[]`: a 400
        data.is_valid(raise_exception=True)
        marked = services.inbox_mark_all_read(user=request.user, until=data.validated_data.get("until"))
        return Response({"marked": marked, "unread_count": selectors.inbox_unread_count(request.user)})


# --- profile ---------------------------------------------------------------------------------


def _profile_payload(user: Any) -> dict[str, Any]:
    profile = RecipientProfile.objects.filter(user=user).first() or RecipientProfile(user=user)
    email = getattr(user, get_user_model().get_email_field_name(), "") or ""
    email_invalid = profile.email_invalid_at is not None and profile.email_invalid_address.lower() in (
        "",
        email.lower(),
    )
    return {
        "email": email,
        "phone": profile.phone,
        "locale": profile.locale,
        "timezone": profile.timezone,
        "email_valid": bool(email) and not email_invalid,
        "phone_valid": bool(profile.phone) and profile.phone_invalid_at is None,
    }


class MyProfileView(MeAPIView):
    """The signed-in user's contact profile (phone, locale, time zone)."""

    @extend_schema(tags=TAGS, summary="My contact profile", responses=ProfileSerializer)
    def get(self, request: Request) -> Response:
        return Response(ProfileSerializer(_profile_payload(request.user)).data)

    @extend_schema(
        tags=TAGS,
        summary="Change my phone, locale or time zone",
        request=ProfileSerializer,
        responses={200: ProfileSerializer, 400: OpenApiTypes.OBJECT},
    )
    def patch(self, request: Request) -> Response:
        data = ProfileSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        try:
            services.profile_update(user=request.user, **data.validated_data)
        except DjangoValidationError as exc:
            raise _as_drf_error(exc) from exc
        return Response(ProfileSerializer(_profile_payload(request.user)).data)


# --- one-click unsubscribe and the hosted preference centre -----------------------------------


def _recipient_language(user: Any | None) -> str:
    """The recipient's locale as a Django language code (``de-CH`` → ``de-ch``; Django falls back to
    ``de``, then to the default, where no translation exists)."""
    locale = RecipientProfile.objects.filter(user=user).values_list("locale", flat=True).first() if user else None
    return (locale or settings.LANGUAGE_CODE).lower()


class UnsubscribeView(APIView):
    """The page behind every e-mail's signed link: RFC 8058 one-click unsubscribe plus the hosted
    preference centre (category-by-channel). No login (the signed token is the authorisation), no CSRF,
    no JavaScript. GET shows the page and changes nothing (mail scanners follow links); a POST of
    ``List-Unsubscribe=One-Click`` opts out of the link's category; a POST of the grid
    (``action=save``) writes it. Shown in the recipient's locale where a translation exists.
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]
    parser_classes = [FormParser, MultiPartParser, JSONParser]

    def _html(self, request: HttpRequest, context: dict[str, Any], status_code: int, user: Any = None) -> HttpResponse:
        language = _recipient_language(user)
        with translation.override(language):
            if user is not None and context.get("state") != "error":
                context["grid"] = centre.preference_grid(user.pk)[1]
                context["channels"] = [(c, str(label)) for c, label in centre.CHANNEL_LABELS.items()]
            context["language"] = translation.get_language()
            response = render(request, "preferences/unsubscribe.html", context, status=status_code)
        response["Content-Language"] = context["language"]
        return response

    def _error(self, request: Request, detail: str, code: str, status_code: int, *, html: bool) -> HttpResponse:
        if html:
            return self._html(request._request, {"state": "error", "detail": detail}, status_code)
        return Response({"detail": detail, "code": code}, status=status_code)

    def _resolve(self, request: Request, token: str, *, html: bool) -> tuple[Any, HttpResponse | None]:
        try:
            target = read_unsubscribe_token(token)
        except UnsubscribeTokenExpired:
            return None, self._error(
                request, "This unsubscribe link has expired.", "expired", status.HTTP_410_GONE, html=html
            )
        except InvalidUnsubscribeToken:
            return None, self._error(request, "invalid link", "invalid_link", status.HTTP_404_NOT_FOUND, html=html)
        if target.category in MANDATORY_CATEGORIES:
            return None, self._error(
                request,
                "Security notifications cannot be unsubscribed from.",
                "mandatory_category",
                status.HTTP_400_BAD_REQUEST,
                html=html,
            )
        if target.category not in Category.values:
            return None, self._error(request, "invalid link", "invalid_link", status.HTTP_404_NOT_FOUND, html=html)
        return target, None

    @extend_schema(
        tags=["unsubscribe"],
        summary="Preference centre and unsubscribe confirmation (no change)",
        auth=[],
        responses={
            (200, "text/html"): OpenApiResponse(
                OpenApiTypes.STR, description="The one-click button for the link's category and the grid"
            ),
            (400, "text/html"): OpenApiResponse(OpenApiTypes.STR, description="The link's category is security"),
            (404, "text/html"): OpenApiResponse(OpenApiTypes.STR, description="Not a valid link (tampered)"),
            (410, "text/html"): OpenApiResponse(OpenApiTypes.STR, description="Expired link"),
        },
    )
    def get(self, request: Request, token: str) -> HttpResponse:
        target, error = self._resolve(request, token, html=True)
        if error is not None:
            return error
        user = get_user_model().objects.filter(pk=target.user_id).first()
        context = {"state": "confirm", "category": centre.category_label(target.category)}
        return self._html(request._request, context, status.HTTP_200_OK, user)

    @extend_schema(
        tags=["unsubscribe"],
        summary="One-click unsubscribe (RFC 8058), or save the preference centre's grid",
        description="Mail clients POST `List-Unsubscribe=One-Click` (form-encoded). Opts the recipient out of "
        "the link's category on every channel. Idempotent. The preference centre's form posts `action=save` "
        "and one `pref-<category>-<channel>` field per ticked box: unticked boxes become opt-outs. 404 for "
        "a tampered link, 400 for the security category, 410 for an expired link.",
        auth=[],
        request={"application/x-www-form-urlencoded": OpenApiTypes.OBJECT},
        responses={
            200: UnsubscribeOutSerializer,
            400: ErrorOutSerializer,
            404: ErrorOutSerializer,
            410: ErrorOutSerializer,
        },
    )
    def post(self, request: Request, token: str) -> HttpResponse:
        saving = request.data.get("action") == "save"
        html = saving or "text/html" in request.headers.get("Accept", "")
        target, error = self._resolve(request, token, html=html)
        if error is not None:
            return error
        user = get_user_model().objects.filter(pk=target.user_id).first()
        label = centre.category_label(target.category)
        if saving:
            if user is not None:
                centre.preferences_apply_grid(user=user, form=request.data)
                logger.info("preference centre saved", extra={"user_id": target.user_id})
            return self._html(request._request, {"state": "saved", "category": label}, status.HTTP_200_OK, user)
        if user is not None:
            services.preferences_opt_out_category(user=user, category=target.category)
            logger.info("unsubscribed", extra={"user_id": target.user_id, "category": target.category})
        if html:
            return self._html(request._request, {"state": "done", "category": label}, status.HTTP_200_OK, user)
        return Response({"unsubscribed": True, "category": target.category})
