"""`run_consumer worker-<channel>`: deliver one channel's messages (dedup, send slots, retries, DLQ)."""

from django.core.management.base import BaseCommand

from notifications.channels import ALL_CHANNELS
from notifications.process import run_consumer


class Command(BaseCommand):
    help = "Deliver messages of one channel (its priority and bulk lanes and their retry tiers)."

    def add_arguments(self, parser):
        parser.add_argument("--channel", required=True, choices=ALL_CHANNELS)
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--metrics-port", type=int, default=None)

    def handle(self, *args, channel: str, batch_size: int | None, metrics_port: int | None, **options):
        run_consumer(f"worker-{channel}", metrics_port=metrics_port, batch_size=batch_size)
