"""`run_consumer dlq-triage`: store, categorise, page on the unknown; or re-apply the rules and exit."""

from django.core.management.base import BaseCommand

from notifications.process import run_consumer


class Command(BaseCommand):
    help = "Consume every notif.<channel>.dlq and notif.events.dlq into DeadLetter rows (categorised, paged)."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=None)
        parser.add_argument("--metrics-port", type=int, default=None)
        parser.add_argument(
            "--recategorise",
            action="store_true",
            help="Re-apply the triage rules to every open 'unknown' entry, print what changed, and exit.",
        )

    def handle(self, *args, batch_size: int | None, metrics_port: int | None, recategorise: bool, **options):
        if recategorise:
            from notifications.dlq.support import recategorise_dead_letters

            changed = recategorise_dead_letters()
            self.stdout.write(self.style.SUCCESS(f"re-categorised {sum(changed.values())} entries: {changed}"))
            return
        run_consumer("dlq-triage", metrics_port=metrics_port, batch_size=batch_size)
