"""The index the retention deletes by (notifications/retention.py)."""

from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without blocking the table's writers (a plain CREATE INDEX would, for as long as it takes).
    atomic = False

    dependencies = [
        ("preferences", "0003_usertokenkey"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="inboxmessage",
            index=models.Index(fields=["created_at"], name="inbox_created"),
        ),
    ]
