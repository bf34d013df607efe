"""Run the provider sandboxes: ``serve(config)`` for asyncio code, ``main(argv)`` for the CLI, which
prints one JSON line once every listener is bound (``{"event": "listening", "ports": {...}, "urls":
{...}}``) and ``{"event": "stopped"}`` after SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from provider_sandbox.apns import ApnsSandbox
from provider_sandbox.base import ProviderSandbox
from provider_sandbox.config import (
    DEFAULT_PORTS,
    DEFAULT_SMTP_CONTROL_PORT,
    PROVIDERS,
    ConfigError,
    LatencyConfig,
    ProviderConfig,
    SandboxConfig,
)
from provider_sandbox.fcm import FcmSandbox
from provider_sandbox.sendgrid import SendGridSandbox
from provider_sandbox.smtp import SmtpSandbox
from provider_sandbox.twilio import TwilioSandbox
from provider_sandbox.webhook import WebhookSandbox

log = logging.getLogger("provider_sandbox")

SANDBOXES: dict[str, type[ProviderSandbox]] = {
    "sendgrid": SendGridSandbox,
    "twilio": TwilioSandbox,
    "fcm": FcmSandbox,
    "apns": ApnsSandbox,
    "webhook": WebhookSandbox,
    "smtp": SmtpSandbox,
}


class SandboxServer:
    """All configured sandboxes on one event loop; ``async with SandboxServer(cfg) as s: s.ports``."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.sandboxes: dict[str, ProviderSandbox] = {}
        self.ports: dict[str, int] = {}
        for index, (name, provider_config) in enumerate(config.providers.items()):
            seed = None if config.seed is None else config.seed + index
            kwargs: dict[str, Any] = {"max_records": config.max_records, "seed": seed}
            if name == "smtp":
                kwargs["control_port"] = config.smtp_control_port
            self.sandboxes[name] = SANDBOXES[name](provider_config, **kwargs)

    async def start(self) -> dict[str, int]:
        try:
            for sandbox in self.sandboxes.values():
                self.ports.update(await sandbox.start(self.config.host))
        except BaseException:
            await self.stop()
            raise
        return dict(self.ports)

    async def stop(self) -> None:
        for sandbox in self.sandboxes.values():
            with contextlib.suppress(Exception):
                await sandbox.stop()

    def urls(self) -> dict[str, str]:
        host = self.config.host
        return {
            name: (f"smtp://{host}:{port}" if name == "smtp" else f"http://{host}:{port}")
            for name, port in self.ports.items()
        }

    async def __aenter__(self) -> SandboxServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _print_ready(info: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()


#: How often the sandbox process moves every surviving object out of the collector's reach.
FREEZE_INTERVAL_SECONDS = 1.0


async def _freeze_survivors(stop_event: asyncio.Event) -> None:
    """Keep garbage collections short as the record buffer grows.

    Every accepted request stays in memory as a record, and a full collection walks all of them,
    for milliseconds once there are tens of thousands. During such a pause requests queue in the kernel and then get
    their arrival timestamp together, so a provider stand-in that measures rates to the request
    would see bunches the clients never sent (and answer 429 for them). `gc.freeze()` moves the
    survivors to the permanent generation, so each collection only looks at the last second's objects.
    """
    while not stop_event.is_set():
        gc.freeze()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_event.wait(), FREEZE_INTERVAL_SECONDS)


async def serve(
    config: SandboxConfig,
    *,
    ready: Callable[[dict[str, Any]], None] | None = _print_ready,
    stop_event: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (main thread only) or until ``stop_event`` is set."""
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop_event.set)
                installed.append(sig)
    server = SandboxServer(config)
    started = False
    try:
        await server.start()
        started = True
        if ready is not None:
            ready(
                {
                    "event": "listening",
                    "pid": os.getpid(),
                    "host": config.host,
                    "ports": server.ports,
                    "urls": server.urls(),
                }
            )
        freezer = asyncio.create_task(_freeze_survivors(stop_event))
        await stop_event.wait()
        await freezer
    finally:
        await server.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)
        if ready is not None and started:
            ready({"event": "stopped", "pid": os.getpid()})


class BackgroundSandbox:
    """Run the sandboxes on a private event loop in a daemon thread (for in-process tests)."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.ports: dict[str, int] = {}
        self.urls: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> BackgroundSandbox:
        self._thread = threading.Thread(target=self._run, name="provider-sandbox", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("sandbox did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def on_ready(info: dict[str, Any]) -> None:
                if info["event"] == "listening":
                    self.ports, self.urls = info["ports"], info["urls"]
                    self._ready.set()

            await serve(self.config, ready=on_ready, stop_event=self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m provider_sandbox",
        description="Local provider sandboxes speaking the SendGrid, Twilio, FCM, APNs, webhook and SMTP wire "
        "formats. Prints one JSON line with the bound ports once listening.",
    )
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    parser.add_argument("--only", default="", help=f"comma separated subset of {','.join(PROVIDERS)}")
    parser.add_argument(
        "--config",
        help="JSON file: {host, max_records, seed, smtp_control_port, "
        "providers: {name: {port, rate, burst, latency, errors, options}}}",
    )
    parser.add_argument("--max-records", type=int, default=None, help="recorded requests kept per provider")
    parser.add_argument("--seed", type=int, default=None, help="seed for latency / random error draws")
    parser.add_argument(
        "--smtp-control-port",
        type=int,
        default=None,
        help=f"HTTP control port of the SMTP sandbox (default {DEFAULT_SMTP_CONTROL_PORT})",
    )
    parser.add_argument("--log-level", default="WARNING")
    for name in PROVIDERS:
        group = parser.add_argument_group(name)
        group.add_argument(f"--{name}-port", type=int, help=f"default {DEFAULT_PORTS[name]}; 0 = any free port")
        group.add_argument(f"--{name}-rate", type=float, help="contract rate, requests/s (default unlimited)")
        group.add_argument(f"--{name}-burst", type=int, help="window capacity (default ceil(rate))")
        group.add_argument(f"--{name}-latency", help="MS | fixed:MS | uniform:MIN:MAX | normal:MEAN:STDDEV")
        group.add_argument(f"--{name}-transient", type=float, help="probability of a transient 5xx")
        group.add_argument(f"--{name}-bad-request", type=float, help="probability of a 400 bad request")
        group.add_argument(f"--{name}-invalid-token", type=float, help="probability of an invalid-token error")
        group.add_argument(
            f"--{name}-option",
            action="append",
            default=[],
            metavar="KEY=JSON",
            help="provider option, value parsed as JSON when possible (repeatable)",
        )
    parser.add_argument("--sendgrid-api-key", action="append", default=[], help="accepted API key (repeatable)")
    parser.add_argument(
        "--twilio-account",
        action="append",
        default=[],
        metavar="SID:TOKEN",
        help="accepted account credentials (repeatable)",
    )
    parser.add_argument("--fcm-project", help="only accept this project id")
    parser.add_argument("--apns-team-id")
    parser.add_argument("--apns-key-id")
    parser.add_argument("--webhook-secret", help="whsec_... enables Standard Webhooks verification")
    parser.add_argument("--smtp-bounce-pattern", help="regex of addresses answered with 550 5.1.1")
    return parser


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _load_config_file(path: str) -> SandboxConfig:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    providers_data: dict[str, Any] = data.get("providers") or {name: {} for name in PROVIDERS}
    config = SandboxConfig.default(only=list(providers_data))
    for name, pdata in providers_data.items():
        pdata = dict(pdata or {})
        if "port" in pdata:
            config.providers[name].port = int(pdata.pop("port"))
        config.providers[name].update(pdata)
    for key in ("host", "max_records", "seed", "smtp_control_port"):
        if key in data:
            setattr(config, key, data[key])
    return config


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """Build a :class:`SandboxConfig` from parsed CLI arguments (flags override ``--config``)."""
    config = _load_config_file(args.config) if args.config else SandboxConfig.default()
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    if only:
        unknown = set(only) - set(PROVIDERS)
        if unknown:
            raise ConfigError(f"unknown providers in --only: {sorted(unknown)}")
        config.providers = {n: config.providers.get(n) or ProviderConfig(name=n, port=DEFAULT_PORTS[n]) for n in only}
    if args.host:
        config.host = args.host
    if args.max_records is not None:
        config.max_records = args.max_records
    if args.seed is not None:
        config.seed = args.seed
    if args.smtp_control_port is not None:
        config.smtp_control_port = args.smtp_control_port
    for name, provider in config.providers.items():
        flag = name.replace("-", "_")
        if getattr(args, f"{flag}_port") is not None:
            provider.port = getattr(args, f"{flag}_port")
        update: dict[str, Any] = {}
        if getattr(args, f"{flag}_rate") is not None:
            update["rate"] = getattr(args, f"{flag}_rate")
        if getattr(args, f"{flag}_burst") is not None:
            update["burst"] = getattr(args, f"{flag}_burst")
        if getattr(args, f"{flag}_latency") is not None:
            update["latency"] = LatencyConfig.parse(getattr(args, f"{flag}_latency")).to_dict()
        errors = {
            kind: getattr(args, f"{flag}_{kind}")
            for kind in ("transient", "bad_request", "invalid_token")
            if getattr(args, f"{flag}_{kind}") is not None
        }
        if errors:
            update["errors"] = errors
        options: dict[str, Any] = {}
        for item in getattr(args, f"{flag}_option"):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--{name}-option expects KEY=VALUE, got {item!r}")
            options[key.strip()] = _option_value(value)
        options.update(_specific_options(name, args))
        if options:
            update["options"] = options
        if update:
            provider.update(update)
    return config


def _specific_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if name == "sendgrid" and args.sendgrid_api_key:
        options["api_keys"] = list(args.sendgrid_api_key)
    if name == "twilio" and args.twilio_account:
        accounts = {}
        for item in args.twilio_account:
            sid, sep, token = item.partition(":")
            if not sep:
                raise ConfigError("--twilio-account expects SID:TOKEN")
            accounts[sid] = token
        options["accounts"] = accounts
    if name == "fcm" and args.fcm_project:
        options["project"] = args.fcm_project
    if name == "apns":
        if args.apns_team_id:
            options["team_id"] = args.apns_team_id
        if args.apns_key_id:
            options["key_id"] = args.apns_key_id
    if name == "webhook" and args.webhook_secret:
        options["secret"] = args.webhook_secret
    if name == "smtp" and args.smtp_bounce_pattern:
        options["bounce_pattern"] = args.smtp_bounce_pattern
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except (ConfigError, OSError, ValueError) as exc:
        parser.error(str(exc))
    try:
        asyncio.run(serve(config))
    except OSError as exc:  # typically: address already in use
        sys.stderr.write(f"sandbox failed to start: {exc}\n")
        return 1
    except KeyboardInterrupt:
        pass
    return 0
