"""After `migrate` (and after a test database flush): the "Support" group and the default rules.

A `post_migrate` receiver rather than a data migration, because a flush (transactional tests, a
`flush` command) empties the tables again and emits `post_migrate`, not the migrations.
"""

from django.db.models.signals import post_migrate

SUPPORT_GROUP = "Support"
#: What support staff may do: see dead letters and their audit, replay and discard them (the
#: custom permissions), maintain triage rules (but not delete them), and see the kill switches
#: whose parked messages they may drain from the DLQ admin. Not: edit or delete dead letters.
SUPPORT_PERMISSIONS = (
    "view_deadletter",
    "replay_deadletter",
    "discard_deadletter",
    "view_dlqaudit",
    "view_triagerule",
    "add_triagerule",
    "change_triagerule",
    "view_killswitch",
)


def ensure_support_group(*, using: str = "default"):
    """Create (or complete) the Support group; returns it. Idempotent."""
    from django.apps import apps
    from django.contrib.auth.management import create_permissions
    from django.contrib.auth.models import Group, Permission

    # Our receiver may run before auth's: make sure the app's permissions exist first.
    create_permissions(apps.get_app_config("notifications"), verbosity=0, using=using)
    group, _ = Group.objects.using(using).get_or_create(name=SUPPORT_GROUP)
    permissions = Permission.objects.using(using).filter(
        content_type__app_label="notifications", codename__in=SUPPORT_PERMISSIONS
    )
    group.permissions.add(*permissions)
    return group


def ensure_default_rules(*, using: str = "default") -> int:
    """Create the default triage rules when there are none at all (a fresh or flushed database)."""
    from notifications.dlq.models import TriageRule
    from notifications.dlq.rules import DEFAULT_RULES

    if TriageRule.objects.using(using).exists():
        return 0
    TriageRule.objects.using(using).bulk_create([TriageRule(**rule) for rule in DEFAULT_RULES])
    return len(DEFAULT_RULES)


def _after_migrate(sender, using="default", plan=None, **kwargs) -> None:
    if getattr(sender, "label", None) != "notifications":
        return
    from django.db import connections

    tables = connections[using].introspection.table_names()
    if "notifications_deadletter" not in tables or "notifications_triagerule" not in tables:
        return  # migrating backwards, or not yet forwards: nothing to seed
    ensure_support_group(using=using)
    ensure_default_rules(using=using)


post_migrate.connect(_after_migrate, dispatch_uid="notifications.dlq.after_migrate")
