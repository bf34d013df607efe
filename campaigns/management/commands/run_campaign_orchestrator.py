"""Run the campaign orchestrator until SIGTERM: launches in, batches out, checkpoints, progress flush."""

from django.core.management.base import BaseCommand

from campaigns.orchestrator import MAX_BATCH_SIZE, build_orchestrator_runner
from notifications.process import install_stop_handlers, start_metrics_server


class Command(BaseCommand):
    help = "Page campaign audiences (keyset, preferences in SQL) and emit notif.<channel>.batch messages."

    def add_arguments(self, parser):
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help=f"Users per page/batch (default CAMPAIGN_BATCH_SIZE; 10k–50k recommended, at most {MAX_BATCH_SIZE}).",
        )
        parser.add_argument(
            "--max-pages-per-second", type=float, default=None, help="Cap on pages emitted per second (0 = none)."
        )
        parser.add_argument("--metrics-port", type=int, default=None)

    def handle(self, *args, batch_size, max_pages_per_second, metrics_port, **options):
        runner = build_orchestrator_runner(batch_size=batch_size, max_pages_per_second=max_pages_per_second)
        install_stop_handlers(runner.stop_event)
        start_metrics_server(metrics_port)
        runner.run()
