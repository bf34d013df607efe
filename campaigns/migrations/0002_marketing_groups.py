"""Groups for marketers: "Marketing" drafts and launches campaigns, "Marketing editors" only drafts."""

from django.db import migrations


def create_groups(apps, schema_editor):
    from campaigns.groups import ensure_marketing_groups

    ensure_marketing_groups(apps, using=schema_editor.connection.alias)


def remove_groups(apps, schema_editor):
    from campaigns.groups import GROUPS

    apps.get_model("auth", "Group").objects.filter(name__in=list(GROUPS)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0001_initial"),
        ("notifications", "0003_scheduledmessage_deliverylog_killswitch_and_more"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
