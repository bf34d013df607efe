"""The index the retention deletes by (notifications/retention.py), built without blocking the
table's writers (a plain CREATE INDEX would, for as long as it takes)."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

INDEX = models.Index(fields=["state_changed_at"], name="campaign_fanout_changed", condition=models.Q(kind="fanout"))


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction
    dependencies = [("campaigns", "0003_fanout")]
    operations = [AddIndexConcurrently("campaign", INDEX)]
