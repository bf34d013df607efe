"""Run any consumer of the registry (`notifications/bus/consumers.py`) until SIGTERM."""

from django.core.management.base import BaseCommand, CommandError

from notifications.bus.consumers import LaneNotApart, consumer, consumers
from notifications.priority import Lane
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
        parser.add_argument(
            "--lane",
            choices=[lane.value for lane in Lane],
            default=None,
            help="read this lane alone (roles that allow it: the dispatcher); default: both, priority first",
        )

    def handle(self, *args, name: str, batch_size: int | None, metrics_port: int | None, instance, lane, **options):
        if lane is not None and not consumer(name).lanes_apart:
            raise CommandError(f"{name} reads its lanes in one process; --lane is not for it")
        lane_option = {} if lane is None else {"lane": Lane(lane)}
        try:
            run_consumer(name, metrics_port=metrics_port, instance=instance, batch_size=batch_size, **lane_option)
        except LaneNotApart as exc:
            raise CommandError(str(exc)) from None
