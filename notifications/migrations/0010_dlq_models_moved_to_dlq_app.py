"""The DLQ models leave the `notifications` app for `dlq` (`notifications.dlq`): state only, tables kept.

Their content types are relabelled `dlq`, so the permissions keep their ids and every group and user
holding one (the Support group, say) keeps it, now as `dlq.replay_deadletter` and so on.
"""

from django.db import migrations

MOVED_MODELS = ("deadletter", "triagerule", "dlqaudit")


def relabel_content_types(apps, schema_editor, *, old: str, new: str) -> None:
    """Give the moved models' content types the new app label (none exist yet on a fresh database)."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    db = schema_editor.connection.alias
    for model in MOVED_MODELS:
        moving = ContentType.objects.using(db).filter(app_label=old, model=model).first()
        if moving is None:
            continue
        fresh = ContentType.objects.using(db).filter(app_label=new, model=model).first()
        if fresh is not None:
            # A post_migrate under the new label ran before this migration and made its own: fold
            # the grants of its permissions into the old ones, which keep their ids, and drop it.
            for permission in Permission.objects.using(db).filter(content_type=fresh):
                twin = Permission.objects.using(db).filter(content_type=moving, codename=permission.codename).first()
                if twin is None:
                    permission.content_type = moving
                    permission.save(update_fields=["content_type"])
                    continue
                twin.group_set.add(*permission.group_set.all())
                twin.user_set.add(*permission.user_set.all())
            fresh.delete()
        moving.app_label = new
        moving.save(update_fields=["app_label"])


def forwards(apps, schema_editor) -> None:
    relabel_content_types(apps, schema_editor, old="notifications", new="dlq")


def backwards(apps, schema_editor) -> None:
    relabel_content_types(apps, schema_editor, old="dlq", new="notifications")


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0009_api_key_quota"),
        ("dlq", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.RemoveField(model_name="dlqaudit", name="actor"),
                migrations.DeleteModel(name="DeadLetter"),
                migrations.DeleteModel(name="TriageRule"),
                migrations.DeleteModel(name="DlqAudit"),
            ],
        ),
        migrations.RunPython(forwards, backwards),
    ]
