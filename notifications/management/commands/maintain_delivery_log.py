"""Create the delivery log's daily partitions ahead and drop those older than the retention."""

from django.core.management.base import BaseCommand

from notifications.log_partitions import maintain_partitions


class Command(BaseCommand):
    help = (
        "Create the delivery log's daily partitions (DELIVERY_LOG_PARTITIONS_AHEAD days ahead) and drop "
        "those older than DELIVERY_LOG_RETENTION_DAYS. run_dispatcher also does this hourly."
    )

    def add_arguments(self, parser):
        parser.add_argument("--ahead", type=int, default=None, help="Days ahead (default: the setting).")
        parser.add_argument("--retention-days", type=int, default=None, help="Days kept (default: the setting).")

    def handle(self, *args, ahead: int | None, retention_days: int | None, **options):
        changes = maintain_partitions(ahead=ahead, retention=retention_days)
        if changes.skipped:
            self.stdout.write(f"skipped: {changes.skipped}")
        for name in changes.created:
            self.stdout.write(f"created {name}")
        for name in changes.dropped:
            self.stdout.write(f"dropped {name}")
        if not (changes.created or changes.dropped or changes.skipped):
            self.stdout.write("nothing to do")
