"""Admin for support staff: recipient profiles, devices, preference documents, the in-app inbox.

Preference documents saved here go through :func:`preferences.services.preferences_update`: the
same schema validation as the API, a version bump, and the cache update on commit.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import Device, InboxMessage, PreferenceDocument, RecipientProfile, UserTokenKey
from .schema import validate_document
from .user_tokens import new_token_secret

USER_SEARCH = ("user__username", "user__email")


@admin.register(RecipientProfile)
class RecipientProfileAdmin(admin.ModelAdmin):
    list_display = (
        "external_id",
        "user",
        "phone",
        "locale",
        "timezone",
        "email_invalid_at",
        "phone_invalid_at",
        "webhook_invalid_at",
    )
    list_filter = ("locale",)
    search_fields = ("=external_id", *USER_SEARCH, "phone")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    readonly_fields = ("created_at", "updated_at")
    actions = ("clear_invalid_marks",)

    @admin.action(description="Clear the invalid marks (email, phone, webhook)")
    def clear_invalid_marks(self, request: HttpRequest, queryset: QuerySet[RecipientProfile]) -> None:
        count = queryset.update(
            email_invalid_at=None,
            email_invalid_address="",
            email_invalid_reason="",
            phone_invalid_at=None,
            phone_invalid_reason="",
            webhook_invalid_at=None,
            webhook_invalid_reason="",
        )
        self.message_user(request, f"Cleared the invalid marks of {count} profile(s).")


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "user",
        "platform",
        "token_tail",
        "active",
        "last_seen_at",
        "deactivated_at",
        "deactivation_reason",
    )
    list_filter = ("platform", "active")
    search_fields = (*USER_SEARCH, "=token")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    readonly_fields = ("created_at", "deactivated_at")
    actions = ("deactivate", "reactivate")

    @admin.display(description="token")
    def token_tail(self, obj: Device) -> str:
        return f"…{obj.token[-12:]}"

    @admin.action(description="Deactivate selected devices")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        count = services.devices_set_active(device_ids=ids, active=False, reason=f"deactivated by {request.user}")
        self.message_user(request, f"Deactivated {count} device(s).")

    @admin.action(description="Reactivate selected devices")
    def reactivate(self, request: HttpRequest, queryset: QuerySet[Device]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        count = services.devices_set_active(device_ids=ids, active=True)
        self.message_user(request, f"Reactivated {count} device(s).")


class PreferenceDocumentForm(forms.ModelForm):
    class Meta:
        model = PreferenceDocument
        fields = ("user", "document")

    def clean_document(self) -> Any:
        document = self.cleaned_data.get("document")
        if document is None:
            document = {}
        errors = validate_document(document)
        if errors:
            raise ValidationError([f"{path}: {message}" for path, msgs in errors.items() for message in msgs])
        return document


@admin.register(PreferenceDocument)
class PreferenceDocumentAdmin(admin.ModelAdmin):
    form = PreferenceDocumentForm
    list_display = ("user", "version", "updated_at")
    search_fields = USER_SEARCH
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    readonly_fields = ("version", "updated_at")

    def get_readonly_fields(self, request: HttpRequest, obj: PreferenceDocument | None = None) -> tuple[str, ...]:
        return (*self.readonly_fields, "user") if obj is not None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: PreferenceDocument, form: forms.ModelForm, change: bool) -> None:
        """Write through the service: validated, version bumped, cache updated on commit."""
        state = services.preferences_update(user=obj.user, document=obj.document, partial=False)
        saved = PreferenceDocument.objects.get(user_id=state.user_id)
        obj.pk, obj.version, obj.updated_at = saved.pk, saved.version, saved.updated_at
        self.message_user(request, f"Saved version {state.version}; the cache is updated.", messages.INFO)


@admin.register(InboxMessage)
class InboxMessageAdmin(admin.ModelAdmin):
    """Read-only: what users see in their in-app inbox."""

    list_display = ("created_at", "user", "type_key", "category", "title", "read_at")
    list_filter = ("category", ("read_at", admin.EmptyFieldListFilter))
    search_fields = (*USER_SEARCH, "=notification_id", "type_key")
    list_select_related = ("user",)
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: InboxMessage | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: InboxMessage | None = None) -> bool:
        return False


@admin.register(UserTokenKey)
class UserTokenKeyAdmin(admin.ModelAdmin):
    """The secret (HS256) and optional public key (RS256) an API key's end-user tokens are checked with.
    Adding one creates the secret; hand it to the producer's backend, which signs tokens with it."""

    list_display = ("api_key", "created_at", "has_rs256")
    raw_id_fields = ("api_key",)
    readonly_fields = ("hs256_secret", "created_at")

    @admin.display(boolean=True, description="RS256 key")
    def has_rs256(self, obj: UserTokenKey) -> bool:
        return bool(obj.rs256_public_key)

    def save_model(self, request: HttpRequest, obj: UserTokenKey, form: Any, change: bool) -> None:
        if not obj.hs256_secret:
            obj.hs256_secret = new_token_secret()
        super().save_model(request, obj, form, change)
