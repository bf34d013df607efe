"""App configuration for the notification core."""

import sys

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        sys.setswitchinterval(settings.GIL_SWITCH_INTERVAL)  # every process of the platform, once
        from notifications import api_schema  # noqa: F401  (registers the API key's security scheme)
        from notifications.groups import ensure_groups_after_migrate

        post_migrate.connect(ensure_groups_after_migrate, sender=self, dispatch_uid="notifications_operations_group")
