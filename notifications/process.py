"""Running a long-lived role: stop on SIGTERM, serve metrics and probes, `run_consumer` for any consumer."""

import gc
import logging
import signal
import threading
from collections.abc import Sequence
from typing import Any

from django.conf import settings

from notifications.probes import ALL_DEPENDENCIES, serve_probes

log = logging.getLogger(__name__)


def install_stop_handlers(stop_event: threading.Event) -> None:
    """SIGTERM/SIGINT only ask the loop to stop; the batch in hand is finished and committed."""

    def _handler(signum, _frame) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop_event.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def start_metrics_server(port: int | None, *, default: int = 0, dependencies: Sequence[str] = ALL_DEPENDENCIES) -> None:
    """Serve /metrics, /healthz and /readyz (checking `dependencies`) on `port`, else METRICS_PORT,
    else the role's `default`; 0 serves nothing. It listens on METRICS_BIND (loopback unless set)."""
    if port is None:
        port = settings.METRICS_PORT if settings.METRICS_PORT is not None else default
    if port:
        serve_probes(port, settings.METRICS_BIND, dependencies)
        log.info("metrics listening", extra={"port": port, "bind": settings.METRICS_BIND})


def run_consumer(name: str, *, metrics_port: int | None = None, instance: str | None = None, **options: Any) -> None:
    """Build the registry consumer `name` with `options` and run it until SIGTERM. `instance`: this
    process's static group membership name (CONSUMER_INSTANCE for the whole process)."""
    from notifications.bus.consumers import consumer

    if instance is not None:
        settings.CONSUMER_INSTANCE = instance
    spec = consumer(name)
    runner = spec.build(**options)
    install_stop_handlers(runner.stop_event)
    start_metrics_server(metrics_port, default=spec.metrics_port, dependencies=spec.dependencies)
    freeze_startup_heap()
    runner.run()


def freeze_startup_heap() -> None:
    """Leave the objects alive after start-up out of every later garbage collection. Full collections
    scan every object alive; after start-up that is mostly Django, the libraries and the settings,
    which live as long as the process (a gen-2 pause every few seconds: gaps in a worker's sends,
    the tail of the web process's latency)."""
    gc.collect()
    gc.freeze()
