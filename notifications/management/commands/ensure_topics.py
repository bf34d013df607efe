"""Create every topic of the registry that is missing; report partition-count mismatches."""

from confluent_kafka import KafkaException
from django.core.management.base import BaseCommand, CommandError

from notifications.bus.kafka_admin import ensure_topics


class Command(BaseCommand):
    help = "Create the platform's Kafka topics from the registry (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--strict", action="store_true", help="Exit non-zero on a partition mismatch.")

    def handle(self, *args, strict: bool, **options):
        try:
            report = ensure_topics()
        except KafkaException as exc:
            raise CommandError(f"kafka: {exc.args[0]}") from exc
        for name in report.created:
            self.stdout.write(f"created {name}")
        for line in report.mismatched:
            self.stderr.write(self.style.WARNING(f"partition mismatch: {line}"))
        self.stdout.write(self.style.SUCCESS(f"{len(report.created)} created, {len(report.existing)} already present"))
        if strict and report.mismatched:
            raise CommandError(f"{len(report.mismatched)} topics differ from the registry")
