"""Run any consumer of the registry (`notifications/bus/consumers.py`) until SIGTERM."""

from django.core.management.base import BaseCommand

from notifications.bus.consumers import consumers
from notifications.process import run_consumer


class Command(BaseCommand):
    help = "Run a Kafka consumer role by name (dispatcher, worker-<channel>, dlq-triage, campaign-…)."

    def add_arguments(self, parser):
        parser.add_argument("name", choices=sorted(consumers()))
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--metrics-port", type=int, default=None, help="default: METRICS_PORT, else the role's")
        parser.add_argument(
            "--instance",
            default=None,
            help="static group membership: a name unique among this role's processes (default: CONSUMER_INSTANCE)",
        )

    def handle(self, *args, name: str, batch_size: int | None, metrics_port: int | None, instance, **options):
        run_consumer(name, metrics_port=metrics_port, instance=instance, batch_size=batch_size)
