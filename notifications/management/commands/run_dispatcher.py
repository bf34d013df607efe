"""`run_consumer dispatcher`: events in, one message per wanted channel out."""

from django.core.management.base import BaseCommand

from notifications.process import run_consumer


class Command(BaseCommand):
    help = "Turn events into per-channel messages (preferences, contact points, kill switches, quiet hours)."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--metrics-port", type=int, default=None)

    def handle(self, *args, batch_size: int | None, metrics_port: int | None, **options):
        run_consumer("dispatcher", metrics_port=metrics_port, batch_size=batch_size)
