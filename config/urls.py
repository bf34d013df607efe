"""URL routes: admin, the versioned REST API, the OpenAPI schema and the health probes."""

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from notifications import health
from notifications.api_errors import not_found
from notifications.metrics_view import metrics_view

handler404 = not_found

urlpatterns = [
    # The DLQ admin's addresses from before it was the `dlq` app (links in pages already sent).
    re_path(
        r"^admin/notifications/(?P<model>deadletter|triagerule|dlqaudit)/(?P<rest>.*)$",
        RedirectView.as_view(url="/admin/dlq/%(model)s/%(rest)s", query_string=True),
        name="legacy-dlq-admin",
    ),
    path("admin/", admin.site.urls),
    path("api/v1/", include("notifications.urls")),
    path("api/v1/", include("preferences.urls")),
    path("api/v1/", include("subscriptions.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
]
