"""App configuration for preferences."""

from django.apps import AppConfig


class PreferencesConfig(AppConfig):
    name = "preferences"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import schema_extensions, signals  # noqa: F401  (the Bearer scheme; the cache invalidation on delete)
