"""After `migrate` (and after a test database flush): the "Support" group and the default rules.

A `post_migrate` receiver (connected in `DlqConfig.ready`) rather than a data migration, because a
flush (transactional tests, a `flush` command) empties the tables again and emits `post_migrate`,
not the migrations.
"""

from django.db.models import Q

SUPPORT_GROUP = "Support"
#: What support staff may do: see dead letters and their audit, replay and discard them (the
#: custom permissions), maintain triage rules (but not delete them), and see the kill switches
#: whose parked messages they may drain from the DLQ admin. Not: edit or delete dead letters.
SUPPORT_PERMISSIONS = (
    "dlq.view_deadletter",
    "dlq.replay_deadletter",
    "dlq.discard_deadletter",
    "dlq.view_dlqaudit",
    "dlq.view_triagerule",
    "dlq.add_triagerule",
    "dlq.change_triagerule",
    "notifications.view_killswitch",
)


def ensure_support_group(*, using: str = "default"):
    """Create (or complete) the Support group; returns it. Idempotent."""
    from django.apps import apps
    from django.contrib.auth.management import create_permissions
    from django.contrib.auth.models import Group, Permission

    # Our receiver may run before auth's: make sure the permissions it grants exist first.
    for app_label in dict.fromkeys(name.split(".")[0] for name in SUPPORT_PERMISSIONS):
        create_permissions(apps.get_app_config(app_label), verbosity=0, using=using)
    group, _ = Group.objects.using(using).get_or_create(name=SUPPORT_GROUP)
    wanted = Q()
    for name in SUPPORT_PERMISSIONS:
        app_label, codename = name.split(".")
        wanted |= Q(content_type__app_label=app_label, codename=codename)
    group.permissions.add(*Permission.objects.using(using).filter(wanted))
    return group


def ensure_default_rules(*, using: str = "default") -> int:
    """Create the default triage rules when there are none at all (a fresh or flushed database)."""
    from notifications.dlq.models import TriageRule
    from notifications.dlq.rules import DEFAULT_RULES

    if TriageRule.objects.using(using).exists():
        return 0
    TriageRule.objects.using(using).bulk_create([TriageRule(**rule) for rule in DEFAULT_RULES])
    return len(DEFAULT_RULES)


def seed_after_migrate(sender, using="default", **kwargs) -> None:
    """`post_migrate` of the `dlq` app: the Support group and the default rules, once the tables exist."""
    from django.db import connections

    from notifications.dlq.models import DeadLetter, TriageRule

    tables = connections[using].introspection.table_names()
    if DeadLetter._meta.db_table not in tables or TriageRule._meta.db_table not in tables:
        return  # migrating backwards, or not yet forwards: nothing to seed
    ensure_support_group(using=using)
    ensure_default_rules(using=using)
