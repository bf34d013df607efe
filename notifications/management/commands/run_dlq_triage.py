"""Run the DLQ triage consumer until SIGTERM: store, categorise, page on the unknown."""

from django.core.management.base import BaseCommand

from notifications.process import install_stop_handlers, start_metrics_server


class Command(BaseCommand):
    help = "Consume every notif.<channel>.dlq and notif.events.dlq into DeadLetter rows (categorised, paged)."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument("--metrics-port", type=int, default=None)
        parser.add_argument(
            "--recategorise",
            action="store_true",
            help="Re-apply the triage rules to every open 'unknown' entry, print what changed, and exit.",
        )

    def handle(self, *args, batch_size: int, metrics_port: int | None, recategorise: bool, **options):
        if recategorise:
            from notifications.dlq.services import recategorise_dead_letters

            changed = recategorise_dead_letters()
            self.stdout.write(self.style.SUCCESS(f"re-categorised {sum(changed.values())} entries: {changed}"))
            return
        from notifications.dlq.triage import build_triage_runner

        runner = build_triage_runner(batch_size=batch_size)
        install_stop_handlers(runner.stop_event)
        start_metrics_server(metrics_port)
        runner.run()
