"""Admin for the notification core: API keys, types and templates (with preview), providers,
kill switches (with drain), the delivery log and the outbox."""

from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from notifications.dispatch.drain import DrainRefused, drain_parked
from notifications.dispatch.templating import CHANNEL_FIELDS, RenderError, build_context, render_fields
from notifications.models import (
    AcceptedEvent,
    ApiKey,
    DeliveryLog,
    KillSwitch,
    KillSwitchMode,
    NotificationTemplate,
    NotificationType,
    OutboxEvent,
    OutboxFailure,
    Provider,
    ScheduledMessage,
)
from notifications.outbox.services import requeue_outbox_failures


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("service", "prefix", "quota_rate", "quota_burst", "created_at", "created_by", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("service", "prefix")
    readonly_fields = ("prefix", "created_at", "created_by", "revoked_at")
    actions = ("revoke_keys",)

    def get_fields(self, request, obj=None):
        quota = ("quota_rate", "quota_burst")
        if obj is None:
            return ("service", *quota)
        return ("service", *quota, "prefix", "created_at", "created_by", "revoked_at")

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = ApiKey.generate(service=obj.service, created_by=request.user)
        key.quota_rate, key.quota_burst = obj.quota_rate, obj.quota_burst
        key.save(update_fields=["quota_rate", "quota_burst"])
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


class NotificationTemplateInline(admin.StackedInline):
    model = NotificationTemplate
    extra = 0
    fields = ("channel", "locale", "subject", "title", "body", "html", "payload")


@admin.register(NotificationType)
class NotificationTypeAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "category", "urgency", "enabled")
    list_filter = ("category", "urgency", "enabled")
    search_fields = ("key", "name")
    inlines = [NotificationTemplateInline]
    readonly_fields = ("preview",)
    fieldsets = (
        (None, {"fields": ("key", "name", "description", "category", "urgency", "default_channels", "enabled")}),
        ("Sample payload and preview", {"fields": ("sample_payload", "preview")}),
    )

    @admin.display(description="Preview (rendered with the sample payload)")
    def preview(self, obj: NotificationType):
        if obj.pk is None:
            return "Save the type to see a preview."
        context = build_context(
            data=obj.sample_payload or {},
            event={"id": "preview", "type": obj.key, "occurred_at": ""},
            user={"id": 0, "email": "preview@example.com"},
            extra={"unsubscribe_url": "https://example.com/unsubscribe/preview"},
        )
        rows = []
        for template in obj.templates.all():
            try:
                rendered = render_fields(template, template.channel, context)
                text = "\n".join(f"{field}: {rendered.get(field, '')}" for field, _ in CHANNEL_FIELDS[template.channel])
            except RenderError as exc:
                text = f"ERROR: {exc}"
            rows.append((template.channel, template.locale or "default", text))
        if not rows:
            return "No templates yet."
        return format_html(
            "<table><tr><th>channel</th><th>locale</th><th>rendered</th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>", rows),
        )


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ("name", "channel", "kind", "rate", "burst", "transactional_reserve", "priority", "enabled")
    list_filter = ("channel", "kind", "enabled")
    list_editable = ("rate", "burst", "priority", "enabled")


@admin.register(KillSwitch)
class KillSwitchAdmin(admin.ModelAdmin):
    list_display = ("channel", "provider", "mode", "reason", "updated_at", "updated_by")
    list_filter = ("mode", "channel")
    readonly_fields = ("updated_at", "updated_by")
    actions = ("drain_parked_messages",)

    def save_model(self, request, obj, form, change):
        obj.updated_by = request.user
        super().save_model(request, obj, form, change)

    @admin.action(description="Drain parked messages of the selected channels", permissions=["change"])
    def drain_parked_messages(self, request, queryset):
        for switch in queryset.exclude(mode__in=[KillSwitchMode.DELAY, KillSwitchMode.PAUSE]):
            try:
                result = drain_parked(channel=switch.channel)
            except DrainRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)
                continue
            self.message_user(request, f"{switch.channel}: moved {result.moved} parked message(s) back.")
        refused = queryset.filter(mode__in=[KillSwitchMode.DELAY, KillSwitchMode.PAUSE])
        for switch in refused:
            self.message_user(
                request, f"{switch.channel}: still '{switch.mode}'; set it to normal first.", messages.ERROR
            )


@admin.register(DeliveryLog)
class DeliveryLogAdmin(admin.ModelAdmin):
    list_display = ("event_id", "user_id", "channel", "type", "status", "reason", "provider", "attempts", "updated_at")
    list_filter = ("status", "channel", "provider")
    search_fields = ("=event_id", "=user_id", "type", "provider_message_id")
    date_hierarchy = "created_at"
    show_full_result_count = False  # the table is large; counting it on every page view is not free

    def has_change_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        return False


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


@admin.register(ScheduledMessage)
class ScheduledMessageAdmin(admin.ModelAdmin):
    """Messages held for quiet hours, released to the outbox when due."""

    list_display = ("id", "topic", "key", "due_at", "created_at")
    date_hierarchy = "due_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(OutboxFailure)
class OutboxFailureAdmin(admin.ModelAdmin):
    """Rows the broker refused for good; requeue them once the cause (say a missing topic) is fixed."""

    list_display = ("original_id", "topic", "key", "error", "created_at", "failed_at")
    list_filter = ("topic",)
    search_fields = ("key", "topic")
    actions = ("requeue",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Requeue selected rows into the outbox", permissions=["delete"])
    def requeue(self, request, queryset):
        count = requeue_outbox_failures(queryset)
        self.message_user(request, f"Requeued {count} row(s); the relay picks them up now.")
