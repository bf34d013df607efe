"""Run a channel worker until SIGTERM: dedup, token bucket, send, retry tiers, DLQ."""

import gc

from django.core.management.base import BaseCommand

from notifications.channels import ALL_CHANNELS
from notifications.delivery.setup import build_worker_runner
from notifications.process import install_stop_handlers, start_metrics_server


class Command(BaseCommand):
    help = "Deliver messages of one channel (consumes notif.<channel> and its retry tiers)."

    def add_arguments(self, parser):
        parser.add_argument("--channel", required=True, choices=ALL_CHANNELS)
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--metrics-port", type=int, default=None)

    def handle(self, *args, channel: str, batch_size: int | None, metrics_port: int | None, **options):
        runner = build_worker_runner(channel, batch_size=batch_size)
        install_stop_handlers(runner.stop_event)
        start_metrics_server(metrics_port)
        # Full collections scan every object alive; after start-up that is mostly Django, the
        # libraries and the settings, which live as long as the process. Measured on the worker:
        # 55-120 ms gen-2 pauses every few seconds, each one a gap in the sends (lost tokens under
        # a rate limit). Freezing the start-up heap leaves only the sends' own objects to scan.
        gc.collect()
        gc.freeze()
        runner.run()
