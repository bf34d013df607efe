"""Run a dispatcher until SIGTERM; several share `notif.events` (and its bulk lane) through the consumer group."""

from django.conf import settings
from django.core.management.base import BaseCommand

from notifications.bus.runner import ConsumerRunner, RunnerConfig
from notifications.bus.topics import events_topic
from notifications.dispatch.dispatcher import Dispatcher, dispatcher_producer
from notifications.priority import Lane
from notifications.process import install_stop_handlers, start_metrics_server
from notifications.redis_client import get_redis


class Command(BaseCommand):
    help = "Turn events into per-channel messages (preferences, contact points, kill switches, quiet hours)."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument("--metrics-port", type=int, default=None)

    def handle(self, *args, batch_size: int, metrics_port: int | None, **options):
        dispatcher = Dispatcher(producer=dispatcher_producer(), redis_client=get_redis())
        runner = ConsumerRunner(
            RunnerConfig(
                role="dispatcher",
                topics=[events_topic()],
                bulk_topics=[events_topic(Lane.BULK)] if settings.PRIORITY_LANES else (),
                group="dispatcher",
                batch_size=batch_size,
                # ≈ 15 ms of dispatching: what an urgent event may wait for behind a digest.
                bulk_batch_size=min(batch_size, 250),
                async_commit=True,
            ),
            dispatcher,
        )
        install_stop_handlers(runner.stop_event)
        start_metrics_server(metrics_port)
        runner.run()
