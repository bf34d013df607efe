"""Campaign admin for marketers: copy with preview, audience predicate (nested builder + reference), schedule in a
time zone, throttle, the state-machine buttons and a live progress panel polled as JSON.

Every action is one call to a service (:mod:`campaigns.services`); permissions are checked there
(launch, pause, resume and cancel need ``campaigns.launch_campaign``), and the admin only hides the
buttons a user may not press.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from campaigns import services
from campaigns.models import Campaign, CampaignCopy, CampaignLaunch, CampaignState
from campaigns.predicates import builder_schema, describe_fields
from campaigns.progress import progress_snapshot
from campaigns.rendering import preview_copy
from campaigns.selectors import audience_estimate
from notifications.channels import Channel
from notifications.dispatch.templating import CHANNEL_FIELDS
from preferences.models import validate_timezone

ACTIONS = {
    "launch": (services.campaign_launch, "Launched", "launch"),
    "pause": (services.campaign_pause, "Paused", "pause"),
    "resume": (services.campaign_resume, "Resumed", "resume"),
    "cancel": (services.campaign_cancel, "Cancelled", "cancel"),
}


class CampaignForm(forms.ModelForm):
    channels = forms.MultipleChoiceField(choices=Channel.choices, widget=forms.CheckboxSelectMultiple)
    schedule_local = forms.DateTimeField(
        required=False,
        label="Start at",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"],
        help_text="Local time in the time zone below. Empty: start as soon as it is launched.",
    )

    class Meta:
        model = Campaign
        fields = ("name", "notification_type", "channels", "audience", "schedule_timezone", "throttle")
        widgets = {"audience": forms.Textarea(attrs={"rows": 8, "cols": 90, "class": "vLargeTextField"})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        instance = self.instance
        if instance.pk and instance.schedule_at:
            tz = _zone(instance.schedule_timezone)
            self.initial["schedule_local"] = timezone.localtime(instance.schedule_at, tz).replace(tzinfo=None)

    def clean(self):
        cleaned = super().clean()
        local = cleaned.get("schedule_local")
        tz_name = cleaned.get("schedule_timezone") or "UTC"
        try:
            validate_timezone(tz_name)
        except ValidationError as exc:
            self.add_error("schedule_timezone", exc)
            return cleaned
        self.instance.schedule_at = (
            timezone.make_aware(local.replace(tzinfo=None), zoneinfo.ZoneInfo(tz_name)).astimezone(dt.UTC)
            if local
            else None
        )
        return cleaned


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


class CampaignCopyInline(admin.StackedInline):
    model = CampaignCopy
    extra = 0
    fields = ("channel", "locale", "subject", "title", "body", "html", "payload", "preview")
    readonly_fields = ("preview",)

    @admin.display(description="Preview (sample recipient)")
    def preview(self, obj: CampaignCopy):
        if obj.pk is None:
            return "Save to see a preview."
        rendered = preview_copy(obj)
        if isinstance(rendered, str):
            return rendered
        fields = [name for name, _ in CHANNEL_FIELDS[obj.channel]]
        return format_html(
            "<table>{}</table>",
            format_html_join(
                "", "<tr><th>{}</th><td><pre>{}</pre></td></tr>", ((f, rendered.get(f, "")) for f in fields)
            ),
        )

    def _editable(self, obj) -> bool:
        return obj is None or obj.state == CampaignState.DRAFT

    def has_add_permission(self, request, obj=None):
        return self._editable(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._editable(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._editable(obj) and super().has_delete_permission(request, obj)


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignForm
    inlines = [CampaignCopyInline]
    change_form_template = "admin/campaigns/campaign/change_form.html"
    list_display = ("name", "kind", "notification_type", "channel_list", "state", "schedule", "progress", "updated_at")
    list_filter = ("kind", "state", "notification_type")
    search_fields = ("name",)
    list_select_related = ("notification_type",)
    actions = ("estimate_audience", "send_test_to_me", "launch", "pause", "resume", "cancel")
    fieldsets = (
        (None, {"fields": ("name", "notification_type", "channels")}),
        ("Audience", {"fields": ("audience",)}),
        ("Schedule and throttle", {"fields": ("schedule_local", "schedule_timezone", "throttle")}),
    )
    status_fields = (
        "state",
        "launch_id",
        "launched_at",
        "launched_by",
        "started_at",
        "finished_at",
        "failure_reason",
        "audience_size",
        "batches_emitted",
        "recipients_emitted",
        "suppressed_preferences",
        "queued",
        "sent",
        "failed",
        "deduplicated",
    )

    #: A fanout event's own fields (``campaigns.fanout``): what the producer sent.
    fanout_fields = ("kind", "source_service", "producer_event_id", "topic", "excluded", "event_data")

    def get_fieldsets(self, request, obj=None):
        fieldsets = list(super().get_fieldsets(request, obj))
        if obj is not None and obj.state != CampaignState.DRAFT:
            fieldsets = [
                (None, {"fields": ("name", "notification_type", "channel_list")}),
                ("Audience", {"fields": ("audience",)}),
                ("Schedule and throttle", {"fields": ("schedule", "throttle")}),
                ("Status", {"fields": self.status_fields}),
            ]
            if obj.is_fanout:
                fieldsets.insert(1, ("Fanout event", {"fields": self.fanout_fields}))
        return fieldsets

    def get_inlines(self, request, obj):
        # A fanout event renders its type's templates (Notification types admin), not campaign copy.
        return [] if obj is not None and obj.is_fanout else super().get_inlines(request, obj)

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.state != CampaignState.DRAFT:
            return (
                "name",
                "notification_type",
                "channel_list",
                "audience",
                "schedule",
                "throttle",
                *self.status_fields,
                *(self.fanout_fields if obj.is_fanout else ()),
            )
        return ()

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.state in (CampaignState.SCHEDULED, CampaignState.RUNNING, CampaignState.PAUSED):
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    # -- columns -----------------------------------------------------------------------------------
    @admin.display(description="channels")
    def channel_list(self, obj: Campaign) -> str:
        return ", ".join(obj.channels or [])

    @admin.display(description="excluded recipients")
    def excluded(self, obj: Campaign) -> int:
        return len(obj.exclude_user_ids or [])

    @admin.display(description="schedule")
    def schedule(self, obj: Campaign) -> str:
        if obj.schedule_at is None:
            return "at launch"
        local = timezone.localtime(obj.schedule_at, _zone(obj.schedule_timezone))
        return f"{local:%Y-%m-%d %H:%M} {obj.schedule_timezone}"

    @admin.display(description="progress")
    def progress(self, obj: Campaign) -> str:
        if obj.launch_id is None:
            return "—"
        return f"{obj.sent} sent, {obj.suppressed} suppressed, {obj.failed} failed"

    # -- change form -------------------------------------------------------------------------------
    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        user = request.user
        may_launch = user.has_perm(services.LAUNCH_PERMISSION)
        buttons = []
        if obj is not None:
            if obj.state == CampaignState.DRAFT and may_launch:
                buttons.append(("launch", "Launch"))
            if obj.state == CampaignState.RUNNING and may_launch:
                buttons.append(("pause", "Pause"))
            if obj.state == CampaignState.PAUSED and may_launch:
                buttons.append(("resume", "Resume"))
            if (
                obj.state in (CampaignState.DRAFT, CampaignState.SCHEDULED, CampaignState.RUNNING, CampaignState.PAUSED)
                and may_launch
            ):
                buttons.append(("cancel", "Cancel campaign"))
        context.update(
            {
                "campaign_buttons": buttons,
                "campaign_may_test": obj is not None and user.has_perm("campaigns.change_campaign"),
                "campaign_field_reference": describe_fields(),
                "campaign_builder_schema": builder_schema(),
                "campaign_progress_url": (
                    reverse("admin:campaigns_campaign_progress", args=[obj.pk])
                    if obj is not None and obj.launch_id
                    else ""
                ),
                "campaign_obj": obj,
            }
        )
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    def get_urls(self):
        wrap = self.admin_site.admin_view
        custom = [
            path("<int:pk>/progress/", wrap(self.progress_view), name="campaigns_campaign_progress"),
            path("<int:pk>/estimate/", wrap(self.estimate_view), name="campaigns_campaign_estimate"),
            path("<int:pk>/send-test/", wrap(self.send_test_view), name="campaigns_campaign_send_test"),
            path("<int:pk>/do/<str:action>/", wrap(self.state_view), name="campaigns_campaign_state"),
        ]
        return custom + super().get_urls()

    def _change_url(self, pk: int) -> str:
        return reverse("admin:campaigns_campaign_change", args=[pk])

    def progress_view(self, request: HttpRequest, pk: int) -> JsonResponse:
        campaign = get_object_or_404(Campaign, pk=pk)
        if not self.has_view_permission(request, campaign):
            raise PermissionDenied
        return JsonResponse(progress_snapshot(campaign))

    def estimate_view(self, request: HttpRequest, pk: int):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        campaign = get_object_or_404(Campaign.objects.select_related("notification_type"), pk=pk)
        if not self.has_view_permission(request, campaign):
            raise PermissionDenied
        self._estimate(request, campaign)
        return HttpResponseRedirect(self._change_url(pk))

    def send_test_view(self, request: HttpRequest, pk: int):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        recipient = (request.POST.get("recipient") or "").strip() or None
        self._send_test(request, get_object_or_404(Campaign, pk=pk), recipient=recipient)
        return HttpResponseRedirect(self._change_url(pk))

    def state_view(self, request: HttpRequest, pk: int, action: str):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if action not in ACTIONS:
            raise PermissionDenied
        self._change_state(request, get_object_or_404(Campaign, pk=pk), action)
        return HttpResponseRedirect(self._change_url(pk))

    # -- the work behind buttons and list actions ----------------------------------------------------
    def _estimate(self, request, campaign: Campaign) -> None:
        try:
            estimate = audience_estimate(campaign)
        except ValidationError as exc:
            self.message_user(request, f"{campaign}: invalid audience: {'; '.join(exc.messages)}", messages.ERROR)
            return
        per_channel = ", ".join(f"{channel}: {n:,}" for channel, n in estimate.eligible.items())
        self.message_user(request, f"{campaign}: {estimate.matching:,} users match; reachable now — {per_channel}.")

    def _send_test(self, request, campaign: Campaign, recipient: str | None = None) -> None:
        try:
            channels = services.campaign_send_test(campaign_id=campaign.pk, user=request.user, recipient_id=recipient)
        except (services.CampaignError, PermissionDenied) as exc:
            self.message_user(request, f"{campaign}: {exc}", messages.ERROR)
            return
        to = f"recipient {recipient}" if recipient else "you"
        self.message_user(request, f"{campaign}: test sent to {to} on {', '.join(channels)}.")

    def _change_state(self, request, campaign: Campaign, action: str) -> None:
        service, done, _verb = ACTIONS[action]
        try:
            service(campaign_id=campaign.pk, user=request.user)
        except (services.CampaignError, PermissionDenied) as exc:
            self.message_user(request, f"{campaign}: {exc}", messages.ERROR)
            return
        self.message_user(request, f"{campaign}: {done.lower()}.")

    @admin.action(description="Estimate audience size")
    def estimate_audience(self, request, queryset):
        for campaign in queryset.select_related("notification_type"):
            self._estimate(request, campaign)

    @admin.action(description="Send a test to me")
    def send_test_to_me(self, request, queryset):
        for campaign in queryset:
            self._send_test(request, campaign)

    @admin.action(description="Launch")
    def launch(self, request, queryset):
        for campaign in queryset:
            self._change_state(request, campaign, "launch")

    @admin.action(description="Pause")
    def pause(self, request, queryset):
        for campaign in queryset:
            self._change_state(request, campaign, "pause")

    @admin.action(description="Resume")
    def resume(self, request, queryset):
        for campaign in queryset:
            self._change_state(request, campaign, "resume")

    @admin.action(description="Cancel")
    def cancel(self, request, queryset):
        for campaign in queryset:
            self._change_state(request, campaign, "cancel")


@admin.register(CampaignLaunch)
class CampaignLaunchAdmin(admin.ModelAdmin):
    list_display = (
        "launch_id",
        "campaign",
        "scheduled_for",
        "next_batch",
        "batch_messages",
        "matched",
        "emission_finished_at",
    )
    readonly_fields = (
        "launch_id",
        "campaign",
        "scheduled_for",
        "created_at",
        "last_user_id",
        "next_batch",
        "batch_messages",
        "emitted_per_channel",
        "matched",
        "emission_finished_at",
    )

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
