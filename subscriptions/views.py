"""The topics API: producers (API key) manage topics and subscribers; end users (``/api/v1/me/topics``)
see and follow the topics that allow it."""

from __future__ import annotations

import re

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from preferences.recipient_views import ProducerAPIView
from preferences.serializers import ErrorOutSerializer
from preferences.views import MeAPIView

from . import selectors, services
from .serializers import (
    MyTopicOutSerializer,
    SubscriberChangeOutSerializer,
    SubscriberPageOutSerializer,
    SubscribersInSerializer,
    TopicInSerializer,
    TopicOutSerializer,
    TopicPageOutSerializer,
)

TAGS = ["topics"]
MAX_PAGE = 1000
NOT_FOUND = {"detail": "No topic has this key.", "code": "not_found"}

_DIGITS = re.compile(r"[0-9]{1,9}")
_USER_CURSOR_RE = re.compile(r"([0-9]{1,18})?")  # empty: the first page
_CURSOR = OpenApiParameter("cursor", str, description="`next_cursor` of the previous page.")
_USER_CURSOR = OpenApiParameter(
    "cursor",
    {"type": "string", "pattern": f"^{_USER_CURSOR_RE.pattern}$"},
    description="`next_cursor` of the previous page.",
)
_LIMIT = OpenApiParameter(
    "limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, description="Page size (default 100)."
)


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise serializers.ValidationError({"limit": [f"A whole number from 1 to {MAX_PAGE}."]})
    return int(raw)


def _user_cursor(request: Request) -> int:
    """0 (the first page) for no or an empty cursor; any other must be one this endpoint returned."""
    raw = request.query_params.get("cursor", "")
    if not _USER_CURSOR_RE.fullmatch(raw):
        raise serializers.ValidationError({"cursor": ["Not a cursor this endpoint returned."]})
    return int(raw or 0)


class TopicsView(ProducerAPIView):
    @extend_schema(
        tags=TAGS,
        summary="List topics",
        parameters=[_CURSOR, _LIMIT],
        responses={200: TopicPageOutSerializer},
    )
    def get(self, request: Request) -> Response:
        limit = _limit(request)
        page = selectors.topics_page(after_key=request.query_params.get("cursor", ""), limit=limit + 1)
        more = len(page) > limit
        page = page[:limit]
        body = {"results": TopicOutSerializer(page, many=True).data, "next_cursor": page[-1].key if more else None}
        return Response(body)

    @extend_schema(
        tags=TAGS,
        summary="Create a topic",
        description="A topic recipients can be subscribed to; events addressed to "
        '`{"target": {"topic": key}}` reach its subscribers. 409 when the key is taken.',
        request=TopicInSerializer,
        responses={201: TopicOutSerializer, 409: ErrorOutSerializer},
        examples=[
            OpenApiExample(
                "A show", value={"key": "show:1234", "name": "The Show", "user_can_follow": True}, request_only=True
            )
        ],
    )
    def post(self, request: Request) -> Response:
        data = TopicInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            topic = services.topic_create(**data.validated_data, service=request.auth.service)
        except services.TopicExists as exc:
            return Response({"detail": str(exc), "code": "topic_exists"}, status=status.HTTP_409_CONFLICT)
        return Response(TopicOutSerializer(topic).data, status=status.HTTP_201_CREATED)


class TopicSubscribersView(ProducerAPIView):
    @extend_schema(
        tags=TAGS,
        summary="List a topic's subscribers",
        description="Recipient ids in a stable order, a page at a time (keyset: any page costs the same).",
        parameters=[_USER_CURSOR, _LIMIT],
        responses={200: SubscriberPageOutSerializer, 404: ErrorOutSerializer},
    )
    def get(self, request: Request, key: str) -> Response:
        limit, after = _limit(request), _user_cursor(request)
        topic = selectors.topic_by_key(key)
        if topic is None:
            return Response(NOT_FOUND, status=404)
        page = selectors.subscribers_page(topic=topic, after_user_id=after, limit=limit)
        next_cursor = str(page.next_after) if page.next_after is not None else None
        return Response({"recipients": page.recipients, "next_cursor": next_cursor})

    @extend_schema(
        tags=TAGS,
        summary="Subscribe recipients to a topic",
        description="Up to 10,000 recipient ids per request. Ids already subscribed are counted as `unchanged`; "
        "ids that name no recipient are listed in `unknown` and not stored.",
        request=SubscribersInSerializer,
        responses={200: SubscriberChangeOutSerializer, 404: ErrorOutSerializer},
        examples=[OpenApiExample("Two", value={"recipients": ["u-42", "u-43"]}, request_only=True)],
    )
    def post(self, request: Request, key: str) -> Response:
        return _change(request, key, services.subscribers_add)


class TopicSubscribersRemoveView(ProducerAPIView):
    @extend_schema(
        tags=TAGS,
        summary="Unsubscribe recipients from a topic",
        description="Up to 10,000 recipient ids per request. Ids that were not subscribed count as `unchanged`.",
        request=SubscribersInSerializer,
        responses={200: SubscriberChangeOutSerializer, 404: ErrorOutSerializer},
    )
    def post(self, request: Request, key: str) -> Response:
        return _change(request, key, services.subscribers_remove)


def _change(request: Request, key: str, service) -> Response:
    data = SubscribersInSerializer(data=request.data)
    data.is_valid(raise_exception=True)
    topic = selectors.topic_by_key(key)
    if topic is None:
        return Response(NOT_FOUND, status=404)
    outcome = service(topic=topic, recipients=data.validated_data["recipients"])
    return Response(SubscriberChangeOutSerializer(outcome).data)


ME_TAGS = ["me"]


class MyTopicsView(MeAPIView):
    @extend_schema(
        tags=ME_TAGS,
        summary="My topics",
        description="The topics I follow, and those I may follow (`following` says which).",
        responses=MyTopicOutSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        rows = selectors.my_topics(user_id=request.user.pk)
        return Response([_mine(topic, following) for topic, following in rows])


class MyTopicView(MeAPIView):
    @extend_schema(
        tags=ME_TAGS,
        summary="Follow a topic",
        request=None,
        responses={200: MyTopicOutSerializer, 403: ErrorOutSerializer, 404: ErrorOutSerializer},
    )
    def put(self, request: Request, key: str) -> Response:
        return _follow(request, key, follow=True)

    @extend_schema(
        tags=ME_TAGS,
        summary="Unfollow a topic",
        request=None,
        responses={200: MyTopicOutSerializer, 403: ErrorOutSerializer, 404: ErrorOutSerializer},
    )
    def delete(self, request: Request, key: str) -> Response:
        return _follow(request, key, follow=False)


def _mine(topic, following: bool) -> dict:
    return MyTopicOutSerializer({**TopicOutSerializer(topic).data, "following": following}).data


def _follow(request: Request, key: str, *, follow: bool) -> Response:
    topic = selectors.visible_topic(key=key, user_id=request.user.pk)
    if topic is None:
        return Response(NOT_FOUND, status=404)
    try:
        services.topic_follow(topic=topic, user_id=request.user.pk, follow=follow)
    except services.TopicNotFollowable:
        detail = "Only the service that owns this topic can change who follows it."
        return Response({"detail": detail, "code": "not_followable"}, status=403)
    return Response(_mine(topic, follow))
