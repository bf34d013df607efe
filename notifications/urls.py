"""Routes of the versioned REST API (`/api/v1/`)."""

from django.urls import path

from notifications.ingest.views import EventIngestView

urlpatterns = [
    path("events", EventIngestView.as_view(), name="events-ingest"),
]
