"""Throughput of each provider adapter against a local sandbox at a given provider latency, one process.

    .venv/bin/python benchmarks/adapter_throughput.py                    # every adapter, 2000 sends, 100 ms
    .venv/bin/python benchmarks/adapter_throughput.py twilio webhook --sends 5000 --latency 100

Prints one line per adapter: sends, seconds, sends/s, client CPU per send and the outcome counts.
The sandbox runs in a subprocess on the same machine, so it competes for the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO)]

from notifications.dispatch.messages import ChannelMessage, channel_message  # noqa: E402

ADAPTERS = ("twilio", "webhook", "sendgrid", "smtp", "fcm", "apns")
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-0123456789!").decode()


def _message(i: int, channel: str, to: dict[str, Any], content: dict[str, Any]) -> ChannelMessage:
    return channel_message(
        event_id=f"bench-{i:08d}",
        user_id=i,
        channel=channel,
        type="bench",
        category="transactional",
        urgency="normal",
        priority="transactional",
        created_at="2025-01-01T00:00:00+00:00",
        locale="en",
        to=to,
        content=content,
    )


def _keys() -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    pem = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(*pem).decode()
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(*pem).decode()
    return rsa_pem, ec_pem


def _scenario(name: str, urls: dict[str, str], ports: dict[str, int]) -> tuple[Any, Callable[[int], dict]]:
    """``(adapter, message factory)`` for one adapter pointed at the sandbox."""
    if name == "twilio":
        from notifications.providers.sms_twilio import TwilioSmsAdapter

        adapter = TwilioSmsAdapter(
            account_sid="AC" + "0" * 32, auth_token="bench", from_number="+15550001111", base_url=urls["twilio"]
        )
        return adapter, lambda i: _message(i, "sms", {"phone": f"+1555{i:07d}"}, {"body": "bench"})
    if name == "webhook":
        from notifications.providers.webhook import WebhookAdapter

        base = urls["webhook"]
        return WebhookAdapter(signing_secret=WEBHOOK_SECRET), lambda i: _message(
            i, "webhook", {"url": f"{base}/hooks/t{i % 10}"}, {"payload": {"i": i}}
        )
    if name in ("sendgrid", "smtp"):
        content = {"subject": "bench", "body": "bench"}
        factory = lambda i: _message(i, "email", {"email": f"user{i}@example.com"}, content)  # noqa: E731
        if name == "sendgrid":
            from notifications.providers.email_anymail import AnymailEmailAdapter

            options = {"api_key": "SG.bench", "api_url": f"{urls['sendgrid']}/v3/"}
            return AnymailEmailAdapter(from_email="bench@example.com", backend_options=options), factory
        from notifications.providers.email_smtp import SmtpEmailAdapter

        return SmtpEmailAdapter(from_email="bench@example.com", host="127.0.0.1", port=ports["smtp"]), factory
    rsa_pem, ec_pem = _keys()
    content = {"title": "bench", "body": "bench", "data": {}}
    if name == "fcm":
        from notifications.providers.push_fcm import FcmPushAdapter, ServiceAccount

        account = ServiceAccount.from_info(
            {"project_id": "bench", "client_email": "b@bench.iam", "private_key": rsa_pem,
             "token_uri": f"{urls['fcm']}/token"}
        )  # fmt: skip
        return FcmPushAdapter(service_account=account, base_url=urls["fcm"]), lambda i: _message(
            i, "push", {"devices": [["fcm", f"token-{i}"]]}, content
        )
    from notifications.providers.push_apns import ApnsPushAdapter

    adapter = ApnsPushAdapter(signing_key=ec_pem, key_id="K", team_id="T", topic="com.bench", base_url=urls["apns"])
    return adapter, lambda i: _message(i, "push", {"devices": [["apns", f"{i:064x}"]]}, content)


async def _measure(name: str, urls: dict[str, str], ports: dict[str, int], sends: int) -> str:
    adapter, factory = _scenario(name, urls, ports)
    async with adapter:
        await adapter.send_many([factory(-1 - i) for i in range(50)])  # warm pools, tokens, threads
        messages = [factory(i) for i in range(sends)]
        started, cpu = time.perf_counter(), time.process_time()
        results = await adapter.send_many(messages)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    outcomes = collections.Counter(str(r.outcome) for r in results)
    return (
        f"{name:9s} {sends:6d} sends  {elapsed:6.2f} s  {sends / elapsed:7.0f}/s  "
        f"client cpu {cpu / sends * 1e3:5.2f} ms/send  {dict(outcomes)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapters", nargs="*", choices=[*ADAPTERS, []], help=f"default: all of {ADAPTERS}")
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=100.0, help="sandbox latency in ms")
    args = parser.parse_args(argv)
    args.adapters = args.adapters or list(ADAPTERS)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    from provider_sandbox.process import SandboxProcess

    providers = sorted(set(args.adapters))
    cli = ["--only", ",".join(providers)]
    for provider in providers:
        cli += [f"--{provider}-port", "0", f"--{provider}-latency", str(args.latency)]
    if "smtp" in providers:
        cli += ["--smtp-control-port", "0"]
    with SandboxProcess(cli) as sandbox:
        print(json.dumps({"latency_ms": args.latency, "cpus": os.cpu_count()}))
        for name in args.adapters:
            print(asyncio.run(_measure(name, sandbox.urls, sandbox.ports, args.sends)), flush=True)


if __name__ == "__main__":
    main()
