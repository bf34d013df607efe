"""A long-running role's /metrics server: its port and the address it listens on."""

import socket
import urllib.request

from notifications import process


def test_metrics_listen_on_loopback_unless_metrics_bind_says_otherwise(settings, monkeypatch):
    served = []
    monkeypatch.setattr(process, "serve_probes", lambda port, addr, dependencies: served.append((port, addr)))
    settings.METRICS_PORT = None
    process.start_metrics_server(None, default=9105)
    settings.METRICS_BIND = "0.0.0.0"
    process.start_metrics_server(9200)
    settings.METRICS_PORT = 0
    process.start_metrics_server(None, default=9105)  # METRICS_PORT=0: no server
    assert served == [(9105, "127.0.0.1"), (9200, "0.0.0.0")]


def test_the_metrics_server_answers_on_the_bound_address(settings):
    settings.METRICS_BIND = "127.0.0.1"
    settings.METRICS_PORT = None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process.start_metrics_server(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    assert b"python_info" in body
