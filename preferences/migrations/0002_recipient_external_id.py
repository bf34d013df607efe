"""Recipients keyed by the producer's external id: the column, then every existing user gets one.

Existing users keep the id producers already used for them, their internal id as a decimal string,
now written down as their external id (a profile is created for users that had none), so events and
links issued before this migration still reach the same people.
"""

from django.conf import settings
from django.db import migrations, models

import preferences.models


def backfill(apps, schema_editor):
    users = apps.get_model(settings.AUTH_USER_MODEL)._meta.db_table
    schema_editor.execute(f"""
        INSERT INTO preferences_recipientprofile
            (user_id, external_id, phone, locale, timezone, attributes, webhook_url, email_invalid_address,
             email_invalid_reason, phone_invalid_reason, webhook_invalid_reason, created_at, updated_at)
        SELECT u.id, u.id::text, '', '', '', '{{}}'::jsonb, '', '', '', '', '', now(), now()
        FROM {users} u
        WHERE NOT EXISTS (SELECT 1 FROM preferences_recipientprofile p WHERE p.user_id = u.id)
    """)  # noqa: S608 - the table name comes from model metadata
    schema_editor.execute(
        "UPDATE preferences_recipientprofile SET external_id = user_id::text WHERE external_id IS NULL"
    )
    # The unique index is created after this step; the inserts' deferred foreign-key checks must run first.
    schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


class Migration(migrations.Migration):
    dependencies = [
        ("preferences", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="recipientprofile",
            name="external_id",
            field=models.CharField(
                blank=True,
                help_text="The producer's id for this recipient (events and the identify API use it). Empty: the "
                "recipient is addressed by its internal user id.",
                max_length=255,
                null=True,
                unique=True,
                validators=[preferences.models.validate_external_id],
            ),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True),
    ]
