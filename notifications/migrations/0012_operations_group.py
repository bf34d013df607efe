"""The "Operations" group (kill switches, providers, outbox failures, types and templates)."""

from django.db import migrations


def create_group(apps, schema_editor):
    from notifications.groups import ensure_operations_group

    ensure_operations_group(apps, using=schema_editor.connection.alias)


def remove_group(apps, schema_editor):
    from notifications.groups import OPERATIONS_GROUP

    apps.get_model("auth", "Group").objects.filter(name=OPERATIONS_GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0011_deliverylog_partitioned"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, remove_group)]
