"""The index the retention deletes by (notifications/retention.py), built without blocking the
table's writers (a plain CREATE INDEX would, for as long as it takes)."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

INDEX = models.Index(fields=["created_at"], name="inbox_created")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction
    dependencies = [("preferences", "0003_usertokenkey")]
    operations = [AddIndexConcurrently("inboxmessage", INDEX)]
