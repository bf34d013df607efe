"""Who may do what: every API route and every admin page and action, for every kind of principal.

Three tables, read top to bottom like a policy: `API` (route x principal → HTTP status), `ADMIN`
(model admin x principal → which of view/add/change/delete), `ACTIONS` (custom admin action → who may
run it). The completeness tests fail when a route or a model admin has no row, so a new endpoint
cannot ship without a decision here. To add a principal (say a recipient's JWT), add a column.
"""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.test import RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

ANON, PRODUCER, USER, OTHER = "anonymous", "producer", "end_user", "other_user"
MARKETER, SUPPORT, OPERATIONS, SUPERUSER = "marketer", "support", "operations", "superuser"
PRINCIPALS = (ANON, PRODUCER, USER, OTHER, MARKETER, SUPPORT, OPERATIONS, SUPERUSER)
STAFF = {MARKETER: "Marketing", SUPPORT: "Support", OPERATIONS: "Operations"}

#: A client address that is not loopback (so `/metrics` shows what the outside sees).
OUTSIDE = "203.0.113.7"


def _row(anon, producer, user, other, marketer, support, operations, superuser) -> dict[str, int]:
    return dict(zip(PRINCIPALS, (anon, producer, user, other, marketer, support, operations, superuser), strict=True))


def _all(status: int) -> dict[str, int]:
    return dict.fromkeys(PRINCIPALS, status)


#: (URL name, method) → expected status per principal. `end_user` acts on its own data; `other_user`
#: is a second end user acting on the first one's (a device or message id of someone else: 404).
#: Staff and superusers are end users too when signed in (their own /me); they never hold a producer key.
SIGNED_IN = _row(401, 401, 200, 200, 200, 200, 200, 200)
API: dict[tuple[str, str], dict[str, int]] = {
    ("events-ingest", "post"): _row(401, 202, 401, 401, 401, 401, 401, 401),
    ("preferences:me-preferences", "get"): SIGNED_IN,
    ("preferences:me-preferences", "put"): SIGNED_IN,
    ("preferences:me-preferences", "patch"): SIGNED_IN,
    ("preferences:me-devices", "get"): SIGNED_IN,
    ("preferences:me-devices", "post"): _row(401, 401, 201, 201, 201, 201, 201, 201),
    ("preferences:me-device", "delete"): _row(401, 401, 204, 404, 404, 404, 404, 404),
    ("preferences:me-notifications", "get"): SIGNED_IN,
    ("preferences:me-notifications-read-all", "post"): SIGNED_IN,
    ("preferences:me-notification-read", "post"): _row(401, 401, 200, 404, 404, 404, 404, 404),
    ("preferences:me-profile", "get"): SIGNED_IN,
    ("preferences:me-profile", "patch"): SIGNED_IN,
    # The identify API: the producer's key only (a recipient's JWT or a session is not a producer).
    ("preferences:recipient", "get"): _row(401, 200, 401, 401, 401, 401, 401, 401),
    ("preferences:recipient", "put"): _row(401, 200, 401, 401, 401, 401, 401, 401),
    ("preferences:recipient", "delete"): _row(401, 204, 401, 401, 401, 401, 401, 401),
    ("preferences:recipients-bulk", "post"): _row(401, 200, 401, 401, 401, 401, 401, 401),
    # Topics: the producer's key manages them; an end user follows the followable ones (/me).
    ("subscriptions:topics", "get"): _row(401, 200, 401, 401, 401, 401, 401, 401),
    ("subscriptions:topics", "post"): _row(401, 201, 401, 401, 401, 401, 401, 401),
    ("subscriptions:topic-subscribers", "get"): _row(401, 200, 401, 401, 401, 401, 401, 401),
    ("subscriptions:topic-subscribers", "post"): _row(401, 200, 401, 401, 401, 401, 401, 401),
    ("subscriptions:topic-subscribers-remove", "post"): _row(401, 200, 401, 401, 401, 401, 401, 401),
    ("subscriptions:me-topics", "get"): SIGNED_IN,
    ("subscriptions:me-topic", "put"): SIGNED_IN,
    ("subscriptions:me-topic", "delete"): SIGNED_IN,
    # The signed link is the authorisation (RFC 8058 one-click): anyone holding it.
    ("preferences:unsubscribe", "get"): _all(200),
    ("preferences:unsubscribe", "post"): _all(200),
    ("schema", "get"): _all(200),
    ("swagger-ui", "get"): _all(200),
    ("healthz", "get"): _all(200),
    ("readyz", "get"): _all(200),
    # Not public: no METRICS_TOKEN here, so only loopback is answered (tests/api/test_metrics_access.py).
    ("metrics", "get"): _all(403),
    # The DLQ admin's old addresses redirect to the new ones (which then ask for a login).
    ("legacy-dlq-admin", "get"): _all(302),
}

#: model admin → letters of view/add/change/delete per staff principal (end users, anonymous
#: visitors and producers have no admin access at all: they are sent to the login page).
ADMIN: dict[str, dict[str, str]] = {
    "auth.group": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vacd"},
    "auth.user": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vacd"},
    "authtoken.tokenproxy": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vacd"},
    "notifications.apikey": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vacd"},
    "notifications.notificationtype": {MARKETER: "v", SUPPORT: "", OPERATIONS: "vc", SUPERUSER: "vacd"},
    "notifications.provider": {MARKETER: "", SUPPORT: "", OPERATIONS: "vac", SUPERUSER: "vacd"},
    "notifications.killswitch": {MARKETER: "", SUPPORT: "v", OPERATIONS: "vac", SUPERUSER: "vacd"},
    "notifications.deliverylog": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vd"},
    "notifications.acceptedevent": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vad"},
    "notifications.outboxevent": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vd"},
    "notifications.scheduledmessage": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vd"},
    "notifications.outboxfailure": {MARKETER: "", SUPPORT: "", OPERATIONS: "vd", SUPERUSER: "vd"},
    "dlq.deadletter": {MARKETER: "", SUPPORT: "v", OPERATIONS: "", SUPERUSER: "v"},
    "dlq.triagerule": {MARKETER: "", SUPPORT: "vac", OPERATIONS: "", SUPERUSER: "vacd"},
    "dlq.dlqaudit": {MARKETER: "", SUPPORT: "v", OPERATIONS: "", SUPERUSER: "v"},
    "preferences.recipientprofile": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vacd"},
    "preferences.device": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vacd"},
    "preferences.preferencedocument": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vacd"},
    "preferences.inboxmessage": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "v"},
    "preferences.usertokenkey": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vacd"},
    "webhooks.webhookendpoint": {MARKETER: "", SUPPORT: "", OPERATIONS: "vac", SUPERUSER: "vacd"},
    "campaigns.campaign": {MARKETER: "vacd", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vacd"},
    "campaigns.campaignlaunch": {MARKETER: "v", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vd"},
    "subscriptions.topic": {MARKETER: "", SUPPORT: "", OPERATIONS: "", SUPERUSER: "vacd"},
}

#: (model admin, action) → the staff principals that may run it. An action guarded inside its service
#: (campaign state changes, DLQ replay) names the permission the service checks.
ACTIONS: dict[tuple[str, str], set[str]] = {
    ("campaigns.campaign", "launch"): {MARKETER, SUPERUSER},
    ("campaigns.campaign", "pause"): {MARKETER, SUPERUSER},
    ("campaigns.campaign", "resume"): {MARKETER, SUPERUSER},
    ("campaigns.campaign", "cancel"): {MARKETER, SUPERUSER},
    ("campaigns.campaign", "estimate_audience"): {MARKETER, SUPERUSER},
    ("campaigns.campaign", "send_test_to_me"): {MARKETER, SUPERUSER},
    ("dlq.deadletter", "replay_selected"): {SUPPORT, SUPERUSER},
    ("dlq.deadletter", "discard_selected"): {SUPPORT, SUPERUSER},
    ("dlq.deadletter", "recategorise_selected"): {SUPPORT, SUPERUSER},
    ("dlq.triagerule", "reapply_to_unknown"): {SUPPORT, SUPERUSER},
    ("notifications.killswitch", "drain_parked_messages"): {OPERATIONS, SUPERUSER},
    ("notifications.outboxfailure", "requeue"): {OPERATIONS, SUPERUSER},
    ("notifications.apikey", "revoke_keys"): {SUPERUSER},
    ("webhooks.webhookendpoint", "retire_previous_secrets"): {OPERATIONS, SUPERUSER},
    ("preferences.recipientprofile", "clear_invalid_marks"): {SUPERUSER},
    ("preferences.device", "deactivate"): {SUPERUSER},
    ("preferences.device", "reactivate"): {SUPERUSER},
}
#: The admin's own pages beyond the model pages (GET) → status per staff principal.
ADMIN_VIEWS: dict[str, dict[str, int]] = {
    "dlq_deadletter_groups": {MARKETER: 403, SUPPORT: 200, OPERATIONS: 403, SUPERUSER: 200},
    "dlq_deadletter_replay_filtered": {MARKETER: 403, SUPPORT: 200, OPERATIONS: 403, SUPERUSER: 200},
    "dlq_deadletter_drain": {MARKETER: 403, SUPPORT: 200, OPERATIONS: 403, SUPERUSER: 200},
    "campaigns_campaign_progress": {MARKETER: 200, SUPPORT: 403, OPERATIONS: 403, SUPERUSER: 200},
}
#: Admin pages that are buttons for an action: the same service, the same row in `ACTIONS`.
ADMIN_VIEWS_AS_ACTIONS = {
    "campaigns_campaign_estimate": ("campaigns.campaign", "estimate_audience"),
    "campaigns_campaign_send_test": ("campaigns.campaign", "send_test_to_me"),
    "campaigns_campaign_state": ("campaigns.campaign", "launch"),
}
#: The permission a service checks before it runs the action (the admin lists the action more widely).
ACTION_SERVICE_PERMISSIONS = {
    ("campaigns.campaign", "launch"): "campaigns.launch_campaign",
    ("campaigns.campaign", "pause"): "campaigns.launch_campaign",
    ("campaigns.campaign", "resume"): "campaigns.launch_campaign",
    ("campaigns.campaign", "cancel"): "campaigns.launch_campaign",
    ("campaigns.campaign", "send_test_to_me"): "campaigns.change_campaign",
    ("dlq.deadletter", "replay_selected"): "dlq.replay_deadletter",
    ("dlq.deadletter", "discard_selected"): "dlq.discard_deadletter",
}


# --- completeness -----------------------------------------------------------------------------------
def _route_names(patterns, prefix: str = "") -> set[str]:
    names = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            if pattern.app_name == "admin":
                continue  # the admin: `ADMIN` and `ACTIONS`
            namespace = f"{prefix}{pattern.namespace}:" if pattern.namespace else prefix
            names |= _route_names(pattern.url_patterns, namespace)
        elif isinstance(pattern, URLPattern):
            names.add(f"{prefix}{pattern.name}" if pattern.name else f"unnamed route {pattern.pattern}")
    return names


def test_every_route_has_a_row():
    assert _route_names(get_resolver().url_patterns) == {name for name, _method in API}


def test_every_model_admin_and_action_has_a_row():
    registered = {model._meta.label_lower: model_admin for model, model_admin in admin.site._registry.items()}
    assert set(registered) == set(ADMIN)
    declared = {(label, name) for label, model_admin in registered.items() for name in (model_admin.actions or ())}
    assert declared == set(ACTIONS)
    standard = ("_changelist", "_add", "_change", "_delete", "_history")
    custom = {
        url.name
        for model_admin in registered.values()
        for url in model_admin.get_urls()
        if getattr(url, "name", None) and not url.name.endswith(standard)
    }
    assert custom == set(ADMIN_VIEWS) | set(ADMIN_VIEWS_AS_ACTIONS)
    assert set(ADMIN_VIEWS_AS_ACTIONS.values()) <= set(ACTIONS)


# --- the principals ---------------------------------------------------------------------------------
@pytest.fixture
def people(django_user_model):
    users = {
        USER: django_user_model.objects.create_user("enduser", email="end@example.com"),
        OTHER: django_user_model.objects.create_user("other", email="other@example.com"),
        SUPERUSER: django_user_model.objects.create_superuser("root", email="root@example.com"),
    }
    for principal, group in STAFF.items():
        user = django_user_model.objects.create_user(principal, email=f"{principal}@example.com", is_staff=True)
        user.groups.add(Group.objects.get(name=group))
        users[principal] = user
    return users


def _client(principal: str, people, api_key) -> APIClient:
    client = APIClient(REMOTE_ADDR=OUTSIDE)
    if principal == PRODUCER:
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {api_key[1]}")
    elif principal != ANON:
        client.force_login(people[principal])
    return client


def _request(name: str, method: str, owner, notification_type) -> tuple[str, dict]:
    """The address and a valid body for route `name`, on `owner`'s data where it takes an id."""
    from preferences.models import Device, InboxMessage
    from preferences.unsubscribe import make_unsubscribe_token

    if name == "events-ingest":
        return reverse(name), {"type": notification_type.key, "recipients": [str(owner.pk)]}
    if name == "preferences:me-device":
        device = Device.objects.create(user=owner, platform="fcm", token=f"owner-token-{owner.pk}")
        return reverse(name, args=[device.pk]), {}
    if name == "preferences:me-notification-read":
        message = InboxMessage.objects.create(user=owner, notification_id="n-1", type_key="t", category="product")
        return reverse(name, args=[message.pk]), {}
    if name == "preferences:unsubscribe":
        return reverse(name, args=[make_unsubscribe_token(owner.pk, "marketing")]), {}
    if name == "preferences:me-devices" and method == "post":
        return reverse(name), {"platform": "fcm", "token": "a-new-token"}
    if name == "preferences:recipient":
        from preferences.identify import RecipientData, recipients_upsert

        recipients_upsert([RecipientData("matrix-r1", fields={"email": "r1@example.com"})])
        return reverse(name, args=["matrix-r1"]), ({"email": "r1-new@example.com"} if method == "put" else {})
    if name == "preferences:recipients-bulk":
        return reverse(name), {"recipients": [{"id": "matrix-r2", "email": "r2@example.com"}]}
    if name.startswith("subscriptions:"):
        from subscriptions.models import Topic

        topic, _ = Topic.objects.get_or_create(key="matrix", defaults={"name": "Matrix", "user_can_follow": True})
        if name == "subscriptions:topics":
            return reverse(name), {"key": "matrix-new", "name": "New"} if method == "post" else {}
        if name.startswith("subscriptions:me-"):
            return (reverse(name, args=[topic.key]) if name.endswith("topic") else reverse(name)), {}
        return reverse(name, args=[topic.key]), ({"recipients": [str(owner.pk)]} if method == "post" else {})
    if name == "legacy-dlq-admin":
        return reverse(name, kwargs={"model": "deadletter", "rest": ""}), {}
    return reverse(name), {}


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize(("name", "method"), list(API))
def test_api(name, method, principal, people, api_key, notification_type, settings):
    settings.METRICS_TOKEN = ""
    path, body = _request(name, method, people[USER], notification_type)
    response = getattr(_client(principal, people, api_key), method)(path, body, format="json")
    if name == "readyz" and response.status_code == 503:
        pytest.skip("a shared service is away; readiness is covered by tests/notifications/test_health.py")
    assert response.status_code == API[(name, method)][principal], response.content[:300]


# --- the admin --------------------------------------------------------------------------------------
def _admin_request(user):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


@pytest.mark.parametrize("principal", [MARKETER, SUPPORT, OPERATIONS, SUPERUSER])
def test_admin_permissions(principal, people):
    request = _admin_request(people[principal])
    actual = {}
    for model, model_admin in admin.site._registry.items():
        checks = (
            ("v", model_admin.has_view_permission(request)),
            ("a", model_admin.has_add_permission(request)),
            ("c", model_admin.has_change_permission(request)),
            ("d", model_admin.has_delete_permission(request)),
        )
        actual[model._meta.label_lower] = "".join(letter for letter, allowed in checks if allowed)
    assert actual == {label: row[principal] for label, row in ADMIN.items()}


@pytest.mark.parametrize("principal", [MARKETER, SUPPORT, OPERATIONS, SUPERUSER])
def test_admin_pages_follow_the_table(principal, people):
    client = APIClient()
    client.force_login(people[principal])
    for label, row in ADMIN.items():
        app_label, model = label.split(".")
        changelist = client.get(reverse(f"admin:{app_label}_{model}_changelist"))
        assert changelist.status_code == (200 if "v" in row[principal] else 403), (label, principal)
        add = client.get(reverse(f"admin:{app_label}_{model}_add"))
        assert add.status_code == (200 if "a" in row[principal] else 403), (label, principal, "add")


@pytest.mark.parametrize("principal", [ANON, USER, PRODUCER])
def test_no_admin_for_non_staff(principal, people, api_key):
    client = _client(principal, people, api_key)
    for label in ADMIN:
        app_label, model = label.split(".")
        response = client.get(reverse(f"admin:{app_label}_{model}_changelist"))
        assert response.status_code == 302 and "/admin/login/" in response["Location"], (label, principal)


@pytest.mark.parametrize("principal", [MARKETER, SUPPORT, OPERATIONS, SUPERUSER])
def test_admin_actions(principal, people):
    user = people[principal]
    request = _admin_request(user)
    registered = {model._meta.label_lower: model_admin for model, model_admin in admin.site._registry.items()}
    for (label, action), allowed in ACTIONS.items():
        model_admin = registered[label]
        # Actions are offered on the change list, so only to whoever may see it.
        offered = model_admin.has_view_permission(request) and action in model_admin.get_actions(request)
        guard = ACTION_SERVICE_PERMISSIONS.get((label, action))
        may_run = offered and (guard is None or user.has_perm(guard))
        assert may_run == (principal in allowed), (label, action, principal)


def test_operations_group_holds_exactly_its_permissions():
    from notifications.groups import OPERATIONS_PERMISSIONS

    group = Group.objects.get(name="Operations")
    held = set(group.permissions.values_list("content_type__app_label", "codename"))
    assert held == set(OPERATIONS_PERMISSIONS)


@pytest.mark.parametrize("principal", [MARKETER, SUPPORT, OPERATIONS, SUPERUSER])
def test_admin_views(principal, people, notification_type):
    from campaigns.models import Campaign

    campaign = Campaign.objects.create(
        name="matrix", notification_type=notification_type, channels=["email"], audience={"all": []}
    )
    client = APIClient()
    client.force_login(people[principal])
    for name, row in ADMIN_VIEWS.items():
        args = [campaign.pk] if name.startswith("campaigns_") else []
        response = client.get(reverse(f"admin:{name}", args=args))
        assert response.status_code == row[principal], (name, principal)
