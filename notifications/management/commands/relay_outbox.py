"""Run an outbox relay until SIGTERM (several may run at once; they share the key buckets of each lane)."""

from django.conf import settings
from django.core.management.base import BaseCommand

from notifications.bus.config import producer_config
from notifications.outbox.relay import RELAY_PRODUCER_OVERRIDES, OutboxRelay, RelayConfig, conninfo_from_django
from notifications.outbox.services import LANE_COLUMN
from notifications.priority import Lane
from notifications.process import install_stop_handlers, start_metrics_server


class Command(BaseCommand):
    help = "Relay committed outbox rows to Kafka (at least once, in order per key)."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=settings.OUTBOX_BATCH_SIZE)
        parser.add_argument("--metrics-port", type=int, default=None)
        parser.add_argument(
            "--lane",
            choices=[lane.value for lane in Lane],
            default=None,
            help="relay this lane's rows alone; default: both, priority rows first",
        )

    def handle(self, *args, batch_size: int, metrics_port: int | None, lane: str | None, **options):
        lanes = tuple(LANE_COLUMN.values()) if lane is None else (LANE_COLUMN[Lane(lane)],)
        relay = OutboxRelay(
            RelayConfig(
                conninfo=conninfo_from_django(),
                producer_config=producer_config(**RELAY_PRODUCER_OVERRIDES),
                buckets=settings.OUTBOX_BUCKETS,
                batch_size=batch_size,
                bulk_batch_size=settings.OUTBOX_BULK_BATCH_SIZE,
                poll_interval=settings.OUTBOX_POLL_INTERVAL,
                lanes=lanes,
            )
        )
        install_stop_handlers(relay.stop_event)
        start_metrics_server(metrics_port, default=9101, dependencies=("postgres", "kafka"))
        relay.run()
