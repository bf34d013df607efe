"""`run_consumer campaign-expander`: notif.<channel>.batch in, paced per-recipient messages out."""

from django.core.management.base import BaseCommand

from campaigns.expansion.expander import ExpanderConfig
from notifications.channels import ALL_CHANNELS
from notifications.process import run_consumer


class Command(BaseCommand):
    help = "Expand campaign batches into per-recipient messages on notif.<channel> (all channels by default)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--channel",
            action="append",
            choices=ALL_CHANNELS,
            default=None,
            help="Channel whose batches to expand; repeat for several (default: every channel).",
        )
        parser.add_argument(
            "--max-backlog",
            type=int,
            default=None,
            help="Messages that may wait in notif.<channel> before more are released "
            "(default CAMPAIGN_EXPANSION_MAX_BACKLOG, else 2 x WORKER_BATCH_SIZE x workers).",
        )
        parser.add_argument("--metrics-port", type=int, default=None)

    def handle(self, *args, channel, max_backlog, metrics_port, **options):
        config = ExpanderConfig.from_settings()
        if max_backlog:
            config.max_backlog = max_backlog
        run_consumer("campaign-expander", metrics_port=metrics_port, channels=channel, config=config)
