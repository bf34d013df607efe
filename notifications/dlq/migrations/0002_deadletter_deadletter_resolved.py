"""The index the retention deletes by (notifications/retention.py), built without blocking the
table's writers (a plain CREATE INDEX would, for as long as it takes)."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

INDEX = models.Index(
    fields=["updated_at"], name="deadletter_resolved", condition=models.Q(status__in=["replayed", "discarded"])
)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction
    dependencies = [("dlq", "0001_initial")]
    operations = [AddIndexConcurrently("deadletter", INDEX)]
