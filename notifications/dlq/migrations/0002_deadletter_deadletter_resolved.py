"""The index the retention deletes by (notifications/retention.py)."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Built without blocking the table's writers (a plain CREATE INDEX would, for as long as it takes).
    atomic = False

    dependencies = [
        ("dlq", "0001_initial"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="deadletter",
            index=models.Index(
                condition=models.Q(("status__in", ["replayed", "discarded"])),
                fields=["updated_at"],
                name="deadletter_resolved",
            ),
        ),
    ]
