"""App configuration for topic subscriptions."""

from django.apps import AppConfig


class SubscriptionsConfig(AppConfig):
    name = "subscriptions"
    verbose_name = "Topics"
    default_auto_field = "django.db.models.BigAutoField"
