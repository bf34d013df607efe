"""App configuration for campaigns."""

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class CampaignsConfig(AppConfig):
    name = "campaigns"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from campaigns.groups import ensure_groups_after_migrate

        # After auth's own post_migrate handler created the permissions (apps are ordered so).
        post_migrate.connect(ensure_groups_after_migrate, sender=self, dispatch_uid="campaigns_marketing_groups")
