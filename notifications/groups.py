"""The "Operations" group: runs the platform, not its content or its customers' data.

Kill switches (and draining what they parked), providers (rates, bursts, failover order), outbox rows
the broker refused (requeue), notification types and their templates, webhook endpoints. Not: API keys, users, dead
letters (Support), campaigns (Marketing). Created by migration ``0012_operations_group`` and topped up
after every ``migrate``/``flush`` (``post_migrate``), like the Marketing and Support groups.
"""

from django.apps import apps as global_apps

OPERATIONS_GROUP = "Operations"
OPERATIONS_PERMISSIONS = (
    ("notifications", "view_killswitch"),
    ("notifications", "add_killswitch"),
    ("notifications", "change_killswitch"),
    ("notifications", "view_provider"),
    ("notifications", "add_provider"),
    ("notifications", "change_provider"),
    ("notifications", "view_outboxfailure"),
    ("notifications", "delete_outboxfailure"),
    ("notifications", "view_notificationtype"),
    ("notifications", "change_notificationtype"),
    ("notifications", "view_notificationtemplate"),
    ("notifications", "add_notificationtemplate"),
    ("notifications", "change_notificationtemplate"),
    ("notifications", "delete_notificationtemplate"),
    ("webhooks", "view_webhookendpoint"),
    ("webhooks", "add_webhookendpoint"),
    ("webhooks", "change_webhookendpoint"),
)


def ensure_operations_group(apps=global_apps, using: str = "default") -> None:
    """Create (or complete) the Operations group. Idempotent; extra permissions are left alone."""
    from django.contrib.auth.management import create_permissions

    for label in dict(OPERATIONS_PERMISSIONS):
        try:
            app_config = apps.get_app_config(label)
        except LookupError:  # a migration's registry without that app: the post_migrate top-up adds it
            continue
        if apps is not global_apps:  # historical registry (migration): its permissions may not exist yet
            app_config.models_module = True
            create_permissions(app_config, apps=apps, verbosity=0, using=using)
            app_config.models_module = None
        else:
            create_permissions(app_config, verbosity=0, using=using)
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    group, _ = group_model.objects.using(using).get_or_create(name=OPERATIONS_GROUP)
    permissions = [
        permission_model.objects.using(using).filter(content_type__app_label=label, codename=codename).first()
        for label, codename in OPERATIONS_PERMISSIONS
    ]
    group.permissions.add(*[p for p in permissions if p is not None])


def ensure_groups_after_migrate(sender, using="default", **kwargs) -> None:
    ensure_operations_group(using=using)
