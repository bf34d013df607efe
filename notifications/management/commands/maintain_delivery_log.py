"""`maintain_tables --table delivery_log`, under its earlier name."""

from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "The delivery log's part of maintain_tables: its daily partitions ahead and past the retention."

    def add_arguments(self, parser):
        parser.add_argument("--ahead", type=int, default=None, help="Days ahead (default: the setting).")
        parser.add_argument("--retention-days", type=int, default=None, help="Days kept (default: the setting).")

    def handle(self, *args, ahead: int | None, retention_days: int | None, **options):
        call_command(
            "maintain_tables", table=["delivery_log"], ahead=ahead, retention_days=retention_days, stdout=self.stdout
        )
