"""Routes under ``/api/v1/`` (namespace ``subscriptions``): the topics API, producer and end user."""

from django.urls import path

from . import views

app_name = "subscriptions"

urlpatterns = [
    path("topics", views.TopicsView.as_view(), name="topics"),
    path("topics/<str:key>/subscribers", views.TopicSubscribersView.as_view(), name="topic-subscribers"),
    path(
        "topics/<str:key>/subscribers/remove",
        views.TopicSubscribersRemoveView.as_view(),
        name="topic-subscribers-remove",
    ),
    path("me/topics", views.MyTopicsView.as_view(), name="me-topics"),
    path("me/topics/<str:key>", views.MyTopicView.as_view(), name="me-topic"),
]
