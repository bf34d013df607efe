"""Admin for registered webhook endpoints: the signing secret is write-only, shown only as fingerprints."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from notifications.webhooks.models import WebhookEndpoint
from notifications.webhooks.secrets import fingerprint
from notifications.webhooks.services import (
    webhook_endpoint_check_secret,
    webhook_endpoint_retire_previous_secrets,
    webhook_endpoint_save,
)


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(
        max_length=2000, assume_scheme="https", help_text=WebhookEndpoint._meta.get_field("url").help_text
    )
    new_secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="whsec_<base64 of 24–64 random bytes>. Write-only: it is never shown again. Empty keeps the "
        "current secrets.",
    )
    keep_previous_secrets = forms.BooleanField(
        required=False,
        initial=True,
        help_text="Rotation: the previous secret keeps signing next to the new one until it is retired "
        "(action “Retire previous secrets”).",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("url", "description", "active")

    def clean(self):
        data = super().clean()
        try:  # the service's own check, so the form and the service say the same thing
            webhook_endpoint_check_secret(
                endpoint=self.instance if self.instance.pk else None, new_secret=data.get("new_secret", "")
            )
        except ValidationError as exc:
            self.add_error("new_secret", exc.message_dict["new_secret"])
        return data


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ("url", "description", "active", "secret_count", "updated_at")
    list_filter = ("active",)
    search_fields = ("url", "description")
    readonly_fields = ("secret_fingerprints", "created_at", "updated_at")
    fields = ("url", "description", "active", "new_secret", "keep_previous_secrets", "secret_fingerprints")
    actions = ("retire_previous_secrets",)

    @admin.display(description="secrets")
    def secret_count(self, obj: WebhookEndpoint) -> int:
        return len(obj.secrets or [])

    @admin.display(description="signing secrets (newest first)")
    def secret_fingerprints(self, obj: WebhookEndpoint) -> str:
        return ", ".join(fingerprint(s) for s in obj.secrets or []) or "—"

    def save_model(self, request, obj, form, change):
        saved = webhook_endpoint_save(
            endpoint=obj if change else None,
            url=form.cleaned_data["url"],
            description=form.cleaned_data.get("description", ""),
            active=form.cleaned_data.get("active", True),
            new_secret=form.cleaned_data.get("new_secret", ""),
            keep_previous_secrets=form.cleaned_data.get("keep_previous_secrets", False),
        )
        obj.pk, obj.url, obj.secrets = saved.pk, saved.url, saved.secrets

    @admin.action(description="Retire previous secrets (only the newest signs)")
    def retire_previous_secrets(self, request, queryset):
        retired = sum(webhook_endpoint_retire_previous_secrets(endpoint=e) for e in queryset)
        messages.success(request, f"{retired} previous secret(s) retired.")
