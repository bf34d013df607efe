"""Move messages parked by a kill switch back into the channel topic (once the switch is normal)."""

from django.core.management.base import BaseCommand, CommandError

from notifications.channels import ALL_CHANNELS
from notifications.dispatch.drain import DrainRefused, drain_parked


class Command(BaseCommand):
    help = "Drain notif.<channel>.delayed into notif.<channel>."

    def add_arguments(self, parser):
        parser.add_argument("--channel", required=True, choices=ALL_CHANNELS)
        parser.add_argument("--limit", type=int, default=None, help="Stop after this many messages.")

    def handle(self, *args, channel: str, limit: int | None, **options):
        try:
            result = drain_parked(channel=channel, limit=limit)
        except DrainRefused as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"moved {result.moved} parked {channel} message(s)"))
