"""Admin for the notification core: API keys, notification types, the outbox."""

from django.contrib import admin, messages
from django.utils import timezone

from notifications.models import AcceptedEvent, ApiKey, NotificationType, OutboxEvent


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("service", "prefix", "created_at", "created_by", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("service", "prefix")
    readonly_fields = ("prefix", "created_at", "created_by", "revoked_at")
    actions = ("revoke_keys",)

    def get_fields(self, request, obj=None):
        return (
            ("service",) if obj is None else ("service", "prefix", "created_at", "created_by", "revoked_at")
        )

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = ApiKey.generate(service=obj.service, created_by=request.user)
        obj.pk, obj.prefix, obj.key_hash = key.pk, key.prefix, key.key_hash
        self.message_user(
            request,
            f"API key for {key.service}: {raw} — copy it now, it is not stored and will not be shown again.",
            messages.WARNING,
        )

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s).")


@admin.register(NotificationType)
class NotificationTypeAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "category", "urgency", "enabled")
    list_filter = ("category", "urgency", "enabled")
    search_fields = ("key", "name")


@admin.register(AcceptedEvent)
class AcceptedEventAdmin(admin.ModelAdmin):
    list_display = ("id", "type", "service", "producer_event_id", "recipient_count", "accepted_at")
    list_filter = ("service", "type")
    search_fields = ("=id", "producer_event_id")
    date_hierarchy = "accepted_at"

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin):
    """Read-only: what is waiting for the relay (should be nearly empty when healthy)."""

    list_display = ("id", "topic", "key", "bucket", "created_at")
    list_filter = ("topic",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
