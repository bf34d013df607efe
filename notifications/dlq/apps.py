"""App configuration of DLQ triage and replay (label `dlq`); connects its `post_migrate` receiver."""

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class DlqConfig(AppConfig):
    name = "notifications.dlq"
    label = "dlq"
    verbose_name = "DLQ triage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from notifications.dlq.signals import seed_after_migrate

        post_migrate.connect(seed_after_migrate, sender=self, dispatch_uid="dlq.seed_after_migrate")
