"""Maintain every table that grows with traffic once: partitions ahead, expired rows gone."""

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from notifications.table_maintenance import TABLES, TableChanges


class Command(BaseCommand):
    help = (
        "Create the delivery log's daily partitions ahead and drop those past DELIVERY_LOG_RETENTION_DAYS; "
        "delete the expired rows of the other bounded tables in batches (ACCEPTED_EVENT_RETENTION_DAYS, "
        "DLQ_RESOLVED_RETENTION_DAYS, INBOX_RETENTION_DAYS, FANOUT_RETENTION_DAYS). run_dispatcher also "
        "does this hourly."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--table", action="append", choices=list(TABLES), help="Only this table (repeatable; default: all)."
        )
        parser.add_argument("--retention-days", type=int, default=None, help="Days kept, with one --table.")
        parser.add_argument("--ahead", type=int, default=None, help="Delivery log: days ahead (default: setting).")
        parser.add_argument("--batch", type=int, default=None, help="Rows per delete batch (default: per table).")

    def handle(self, *args, table: list[str] | None, retention_days: int | None, ahead, batch, **options):
        names = table or list(TABLES)
        if retention_days is not None and len(names) != 1:
            raise CommandError("--retention-days needs exactly one --table")
        overrides = {"retention": retention_days, "ahead": ahead, "batch": batch}
        failures = []
        for name in names:
            steps: list[TableChanges] = []
            try:
                steps.extend(TABLES[name](**overrides))
            except DatabaseError as exc:
                failures.append(f"{name}: {str(exc).strip().splitlines()[0]}")
                if not steps:
                    continue
            for line in report(name, steps):
                self.stdout.write(line)
        if failures:
            raise CommandError("; ".join(failures))


def report(name: str, steps: list[TableChanges]) -> list[str]:
    """The lines a run prints for one table."""
    lines = [f"{name}: skipped ({step.skipped})" for step in steps if step.skipped]
    lines += [f"{name}: created {part}" for step in steps for part in step.created]
    lines += [f"{name}: dropped {part}" for step in steps for part in step.dropped]
    deleted = sum(step.deleted for step in steps)
    if deleted:
        lines.append(f"{name}: deleted {deleted} rows in {len(steps)} batches")
    return lines or [f"{name}: nothing to do"]
