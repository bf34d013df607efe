"""`run_consumer campaign-orchestrator`: launches in, batches out, checkpoints, progress flush."""

from django.core.management.base import BaseCommand

from campaigns.orchestrator import MAX_BATCH_SIZE
from notifications.process import run_consumer


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
        run_consumer(
            "campaign-orchestrator",
            metrics_port=metrics_port,
            batch_size=batch_size,
            max_pages_per_second=max_pages_per_second,
        )
