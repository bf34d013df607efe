"""Shared plumbing for long-running commands: signal handling and the metrics endpoint."""

import logging
import signal
import threading

from django.conf import settings
from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def install_stop_handlers(stop_event: threading.Event) -> None:
    """SIGTERM/SIGINT only ask the loop to stop; the batch in hand is finished and committed."""

    def _handler(signum, _frame) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop_event.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def start_metrics_server(port: int | None) -> None:
    port = settings.METRICS_PORT if port is None else port
    if port:
        start_http_server(port, addr="127.0.0.1")
        log.info("metrics listening", extra={"port": port})
