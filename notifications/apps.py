"""App configuration for the notification core."""

from django.apps import AppConfig
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from notifications import api_schema  # noqa: F401  (registers the API key's security scheme)
        from notifications.cpu_priority import on_connection_created
        from notifications.groups import ensure_groups_after_migrate

        post_migrate.connect(ensure_groups_after_migrate, sender=self, dispatch_uid="notifications_operations_group")
        connection_created.connect(on_connection_created, dispatch_uid="notifications_session_priority")
