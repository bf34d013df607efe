"""The marketers' groups: "Marketing" drafts and launches campaigns, "Marketing editors" only drafts.

Created by migration ``0002_marketing_groups`` and topped up after every ``migrate``/``flush``
(``post_migrate``), so a group that lost a permission, or a freshly flushed test database, gets
them back. Existing extra permissions of the groups are left alone.
"""

from django.apps import apps as global_apps

EDITOR_PERMISSIONS = [
    ("campaigns", "add_campaign"),
    ("campaigns", "change_campaign"),
    ("campaigns", "view_campaign"),
    ("campaigns", "add_campaigncopy"),
    ("campaigns", "change_campaigncopy"),
    ("campaigns", "delete_campaigncopy"),
    ("campaigns", "view_campaigncopy"),
    ("campaigns", "view_campaignlaunch"),
    ("notifications", "view_notificationtype"),
    ("notifications", "view_notificationtemplate"),
]
MARKETING_PERMISSIONS = [*EDITOR_PERMISSIONS, ("campaigns", "delete_campaign"), ("campaigns", "launch_campaign")]
GROUPS = {"Marketing": MARKETING_PERMISSIONS, "Marketing editors": EDITOR_PERMISSIONS}


def ensure_marketing_groups(apps=global_apps, using: str = "default") -> None:
    from django.contrib.auth.management import create_permissions

    for app_label in ("campaigns", "notifications"):
        app_config = apps.get_app_config(app_label)
        if apps is not global_apps:  # historical app registry (migration): permissions are not there yet
            app_config.models_module = True
            create_permissions(app_config, apps=apps, verbosity=0, using=using)
            app_config.models_module = None
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for name, wanted in GROUPS.items():
        group, _ = group_model.objects.using(using).get_or_create(name=name)
        permissions = [
            permission_model.objects.using(using).filter(content_type__app_label=label, codename=codename).first()
            for label, codename in wanted
        ]
        group.permissions.add(*[p for p in permissions if p is not None])


def ensure_groups_after_migrate(sender, using="default", **kwargs) -> None:
    ensure_marketing_groups(using=using)
