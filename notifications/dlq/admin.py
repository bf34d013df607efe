"""Admin for support staff: dead letters (filters, search, grouped view, detail with payload and error
history; replay, replay-by-filter, discard, re-categorise, drain parked), triage rules, the audit.

Only users with the custom permissions (the "Support" group, and superusers) see and may use replay,
discard and drain; every one of them goes through a service in `support.py` and is audited there.
Templates: `templates/admin/dlq/deadletter/` (the admin finds `change_list.html` there by its name).
"""

from urllib.parse import urlencode

import orjson
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, Min, Q
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from notifications.channels import ALL_CHANNELS
from notifications.dispatch.drain import DrainRefused
from notifications.dlq.models import DeadLetter, DeadLetterStatus, DlqAudit, TriageRule
from notifications.dlq.support import (
    DISCARD_PERMISSION,
    REPLAY_PERMISSION,
    REPLAYABLE_STATUSES,
    discard_dead_letters,
    drain_parked_channel,
    recategorise_dead_letters,
    replay_dead_letters,
)
from notifications.models import KillSwitch

#: Groups shown on the grouped view (the largest first); more is a sign the filter is too wide.
MAX_GROUPS = 200


def _pretty_json(value) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


class DiscardForm(forms.Form):
    reason = forms.CharField(
        max_length=500, widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), help_text="Recorded in the audit."
    )


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "last_failed_at",
        "channel",
        "category",
        "status",
        "provider",
        "recipient",
        "error_class",
        "short_error",
        "attempts",
        "failure_count",
    )
    list_display_links = ("id", "last_failed_at")
    list_filter = ("channel", "category", "status", "provider", "error_class", "last_failed_at")
    search_fields = ("recipient", "event_id", "message_id")
    search_help_text = "Exact recipient (address, phone, token, URL), event id, message id or user id."
    list_per_page = 100
    show_full_result_count = False  # the table can be large; counting it on every page view is not free
    ordering = ("-last_failed_at", "-id")
    actions = ("replay_selected", "discard_selected", "recategorise_selected")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "message_id",
                    ("channel", "provider"),
                    ("category", "rule"),
                    "fingerprint_link",
                    ("status", "discarded_reason"),
                    ("recipient", "user_id"),
                    ("event_id", "event_type"),
                    ("attempts", "failure_count", "replay_count"),
                    ("first_failed_at", "last_failed_at"),
                    ("replayed_at", "last_audit", "paged_at"),
                )
            },
        ),
        ("Error", {"fields": (("error_class", "cause_class", "error_code"), "error_message", "error_history")}),
        (
            "Original message",
            {
                "fields": (
                    "origin_topic",
                    "message_key",
                    "dlq_position",
                    "payload_pretty",
                    "raw_payload",
                    "headers_pretty",
                )
            },
        ),
    )

    # -- read-only records ---------------------------------------------------------------------
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # entries change only through replay/discard (audited), never by editing

    def has_delete_permission(self, request, obj=None):
        return False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REPLAY_PERMISSION)

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(DISCARD_PERMISSION)

    def has_recategorise_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("dlq.change_triagerule")

    def get_search_results(self, request, queryset, search_term):
        """Exact matches on indexed columns only (no LIKE scans over a big table)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(recipient=term) | Q(recipient=term.lower()) | Q(event_id=term) | Q(event_id=term.lower())
        match |= Q(message_id=term)
        if term.isascii() and term.isdigit() and len(term) < 19:
            match |= Q(user_id=int(term))
        return queryset.filter(match), False

    # -- detail display --------------------------------------------------------------------------
    @admin.display(description="error")
    def short_error(self, obj: DeadLetter) -> str:
        return (obj.error_message or "")[:80]

    @admin.display(description="fingerprint")
    def fingerprint_link(self, obj: DeadLetter):
        url = reverse("admin:dlq_deadletter_changelist") + "?" + urlencode({"fingerprint": obj.fingerprint})
        alike = DeadLetter.objects.filter(fingerprint=obj.fingerprint).count()
        return format_html('<a href="{}">{}</a> ({} alike)', url, obj.fingerprint, alike)

    @admin.display(description="DLQ position")
    def dlq_position(self, obj: DeadLetter) -> str:
        return f"{obj.dlq_topic} [{obj.dlq_partition}] @ {obj.dlq_offset}"

    @admin.display(description="payload")
    def payload_pretty(self, obj: DeadLetter):
        if obj.payload is None:
            return "(not JSON: see raw payload)"
        return format_html("<pre>{}</pre>", _pretty_json(obj.payload))

    @admin.display(description="headers")
    def headers_pretty(self, obj: DeadLetter):
        return format_html("<pre>{}</pre>", _pretty_json(obj.headers))

    @admin.display(description="error history")
    def error_history(self, obj: DeadLetter):
        errors = [e for e in obj.errors or [] if isinstance(e, dict)]
        if not errors:
            return "(no history: dead-lettered at once)"
        rows = [
            (
                e.get("at", ""),
                e.get("provider", ""),
                e.get("error_class", ""),
                e.get("status", ""),
                e.get("code", ""),
                e.get("message", ""),
            )
            for e in errors
        ]
        return format_html(
            "<table><tr><th>at (epoch)</th><th>provider</th><th>class</th><th>status</th><th>code</th>"
            "<th>message</th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    def get_readonly_fields(self, request, obj=None):
        return self._flat_fields()

    def _flat_fields(self) -> list[str]:
        names: list[str] = []
        for _title, options in self.fieldsets:
            for item in options["fields"]:
                names.extend(item if isinstance(item, tuple) else (item,))
        return names

    # -- actions (one line each into a service) -----------------------------------------------------
    @admin.action(description="Replay selected entries", permissions=["replay"])
    def replay_selected(self, request, queryset):
        result = replay_dead_letters(actor=request.user, queryset=queryset, selection=_describe(request))
        self._report(request, "Replayed", result)

    @admin.action(description="Discard selected entries (asks for a reason)…", permissions=["discard"])
    def discard_selected(self, request, queryset):
        form = DiscardForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            result = discard_dead_letters(
                actor=request.user, queryset=queryset, reason=form.cleaned_data["reason"], selection=_describe(request)
            )
            self._report(request, "Discarded", result)
            return None
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Discard dead letters",
            "form": form,
            "count": queryset.count(),
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/dlq/deadletter/discard.html", context)

    @admin.action(description="Re-apply triage rules to selected entries", permissions=["recategorise"])
    def recategorise_selected(self, request, queryset):
        changed = recategorise_dead_letters(queryset=queryset, actor=request.user)
        self.message_user(request, f"Re-categorised {sum(changed.values())} entr(y/ies): {changed or 'no change'}.")

    def _report(self, request, verb: str, result) -> None:
        skipped = f"; {result.skipped} skipped (already done or nothing to replay)" if result.skipped else ""
        self.message_user(request, f"{verb} {result.count} entr(y/ies){skipped}. Audit #{result.audit_id}.")

    # -- extra views --------------------------------------------------------------------------------
    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("groups/", wrap(self.groups_view), name="dlq_deadletter_groups"),
            path("replay-filtered/", wrap(self.replay_filtered_view), name="dlq_deadletter_replay_filtered"),
            path("drain/", wrap(self.drain_view), name="dlq_deadletter_drain"),
            *super().get_urls(),
        ]

    def _filtered(self, request):
        """The changelist's queryset for the request's filters and search (what the list shows)."""
        return self.get_changelist_instance(request).get_queryset(request)

    def _changelist_url(self, request) -> str:
        url = reverse("admin:dlq_deadletter_changelist")
        query = request.GET.urlencode()
        return f"{url}?{query}" if query else url

    def groups_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            qs = self._filtered(request)
        except IncorrectLookupParameters:
            return redirect("admin:dlq_deadletter_changelist")
        groups = list(
            qs.order_by()
            .values("fingerprint")
            .annotate(
                count=Count("id"),
                open=Count("id", filter=Q(status=DeadLetterStatus.OPEN)),
                first=Min("first_failed_at"),
                last=Max("last_failed_at"),
                category=Max("category"),
                channel=Max("channel"),
                provider=Max("provider"),
                error_class=Max("error_class"),
                cause_class=Max("cause_class"),
                error_code=Max("error_code"),
                sample=Max("error_message"),
            )
            .order_by("-count", "fingerprint")[:MAX_GROUPS]
        )
        base = request.GET.copy()
        for group in groups:
            base["fingerprint"] = group["fingerprint"]
            group["url"] = reverse("admin:dlq_deadletter_changelist") + "?" + base.urlencode()
            group["sample"] = (group["sample"] or "")[:200]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Dead letters grouped by fingerprint",
            "groups": groups,
            "max_groups": MAX_GROUPS,
            "changelist_url": self._changelist_url(request),
        }
        return TemplateResponse(request, "admin/dlq/deadletter/groups.html", context)

    def replay_filtered_view(self, request):
        """Replay everything the current filter shows, after a confirmation that shows the count.
        The confirmation pins the highest id, so entries that arrive meanwhile are not included."""
        if not self.has_replay_permission(request):
            raise PermissionDenied
        try:
            qs = self._filtered(request)
        except IncorrectLookupParameters:
            return redirect("admin:dlq_deadletter_changelist")
        if request.method == "POST":
            try:
                max_id = int(request.POST.get("max_id", ""))
            except ValueError:
                max_id = 0
            result = replay_dead_letters(
                actor=request.user,
                queryset=qs.filter(pk__lte=max_id),
                selection=f"filter: {request.GET.urlencode() or '(none)'}",
            )
            self._report(request, "Replayed", result)
            return HttpResponseRedirect(self._changelist_url(request))
        stats = qs.order_by().aggregate(
            count=Count("id"), replayable=Count("id", filter=Q(status__in=REPLAYABLE_STATUSES)), max_id=Max("id")
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Replay every dead letter matching the filter",
            "count": stats["count"],
            "replayable": stats["replayable"],
            "skipped": stats["count"] - stats["replayable"],
            "max_id": stats["max_id"] or 0,
            "filters": [(k, v) for k, values in request.GET.lists() for v in values],
            "changelist_url": self._changelist_url(request),
        }
        return TemplateResponse(request, "admin/dlq/deadletter/replay_filtered.html", context)

    def drain_view(self, request):
        """The existing kill-switch drain (`drain_parked`), offered here per channel, audited."""
        if not self.has_replay_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            channel = request.POST.get("channel", "")
            if channel not in ALL_CHANNELS:
                raise PermissionDenied
            try:
                result = drain_parked_channel(channel=channel, actor=request.user)
            except DrainRefused as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(
                    request, f"{channel}: moved {result.count} parked message(s) back. Audit #{result.audit_id}."
                )
            return redirect("admin:dlq_deadletter_drain")
        modes = {k.channel: k for k in KillSwitch.objects.filter(provider="")}
        channels = [(c, modes[c].mode if c in modes else "normal") for c in ALL_CHANNELS]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Drain messages parked by a kill switch",
            "channels": channels,
            "killswitch_url": reverse("admin:notifications_killswitch_changelist"),
        }
        return TemplateResponse(request, "admin/dlq/deadletter/drain.html", context)

    def changelist_view(self, request, extra_context=None):
        extra = {
            "can_replay": self.has_replay_permission(request),
            "query": request.GET.urlencode(),
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=extra)


def _describe(request) -> str:
    """What an action ran on, for the audit: the changelist filter and the selection."""
    query = request.GET.urlencode() or "(no filter)"
    if request.POST.get("select_across") in ("1", "True", "true"):
        return f"all matching filter: {query}"
    selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
    ids = ",".join(selected[:50]) + ("…" if len(selected) > 50 else "")
    return f"selected {len(selected)} (ids {ids}); filter: {query}"


@admin.register(TriageRule)
class TriageRuleAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "priority",
        "enabled",
        "category",
        "channel",
        "provider",
        "error_classes",
        "cause_classes",
        "provider_codes",
        "message_pattern",
    )
    list_editable = ("priority", "enabled")
    list_filter = ("category", "enabled", "channel")
    search_fields = ("name", "error_classes", "provider_codes", "message_pattern")
    actions = ("reapply_to_unknown",)

    @admin.action(
        description="Re-apply ALL rules to every open 'unknown' dead letter (the selection is ignored)",
        permissions=["change"],
    )
    def reapply_to_unknown(self, request, queryset):
        changed = recategorise_dead_letters(actor=request.user)
        self.message_user(request, f"Re-categorised {sum(changed.values())} entr(y/ies): {changed or 'no change'}.")


@admin.register(DlqAudit)
class DlqAuditAdmin(admin.ModelAdmin):
    list_display = ("at", "action", "actor_name", "requested", "count", "skipped", "reason", "finished_at")
    list_filter = ("action", "at")
    search_fields = ("actor_name", "reason")
    readonly_fields = (
        "action", "actor", "actor_name", "at", "finished_at", "requested", "count", "skipped", "reason", "selection",
    )  # fmt: skip

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
