"""The index the retention deletes by (notifications/retention.py)."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without blocking the table's writers (a plain CREATE INDEX would, for as long as it takes).
    atomic = False

    dependencies = [
        ("campaigns", "0003_fanout"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="campaign",
            index=models.Index(
                condition=models.Q(("kind", "fanout")), fields=["state_changed_at"], name="campaign_fanout_changed"
            ),
        ),
    ]
