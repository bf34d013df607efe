"""App configuration of registered webhook endpoints (label `webhooks`)."""

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "notifications.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"
