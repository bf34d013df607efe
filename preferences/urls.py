"""Routes under ``/api/v1/`` (namespace ``preferences``): the end-user API and the identify API."""

from django.urls import path

from . import recipient_views, views

app_name = "preferences"

urlpatterns = [
    path("me/preferences", views.MyPreferencesView.as_view(), name="me-preferences"),
    path("me/devices", views.MyDevicesView.as_view(), name="me-devices"),
    path("me/devices/<int:pk>", views.MyDeviceView.as_view(), name="me-device"),
    path("me/notifications", views.MyNotificationsView.as_view(), name="me-notifications"),
    path("me/notifications/read-all", views.MyNotificationsReadAllView.as_view(), name="me-notifications-read-all"),
    path("me/notifications/<int:pk>/read", views.MyNotificationReadView.as_view(), name="me-notification-read"),
    path("me/profile", views.MyProfileView.as_view(), name="me-profile"),
    path("recipients/bulk", recipient_views.RecipientBulkView.as_view(), name="recipients-bulk"),
    path("recipients/<str:external_id>", recipient_views.RecipientView.as_view(), name="recipient"),
    path("unsubscribe/<str:token>", views.UnsubscribeView.as_view(), name="unsubscribe"),
]
