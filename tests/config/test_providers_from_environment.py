"""What an operator sets in the environment reaches the provider adapters: an SMTP relay with a login."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: A process configured only by its environment sends one e-mail through the channel's adapter.
SEND_ONE_EMAIL = """
import asyncio, django
django.setup()
from notifications.dispatch.messages import channel_message
from notifications.providers.registry import adapter_for_channel, close_adapters

async def main():
    adapter = adapter_for_channel("email")
    message = channel_message(
        event_id="00000000-0000-4000-8000-000000000001", user_id=1, channel="email", type="order.shipped",
        category="transactional", urgency="normal", priority="transactional",
        created_at="2026-11-25T10:00:00+00:00", locale="en", to={"email": "ada@example.com"},
        content={"subject": "Shipped", "body": "On its way"},
    )
    result = await adapter.send(message)
    await close_adapters()
    print(adapter.name, result.outcome)

asyncio.run(main())
"""


@pytest.fixture
def relay_with_login(sandbox):
    """The SMTP sandbox offering AUTH and accepting one login."""
    smtp = sandbox.client("smtp")
    smtp.configure(options={"auth": {"relay-user": "relay-password"}})
    yield smtp
    smtp.reset(config=True)


def send_with(env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", SEND_ONE_EMAIL], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_an_smtp_relay_that_needs_a_login_is_configured_from_the_environment(sandbox, relay_with_login) -> None:
    env = {
        **os.environ,
        **sandbox.env,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": str(ROOT),
        "NOTIFICATION_PROVIDERS": "email=smtp",
        "SMTP_USERNAME": "relay-user",
        "SMTP_PASSWORD": "relay-password",
    }
    assert send_with(env) == "smtp sent"
    assert relay_with_login.stats()["accepted"] == 1
    assert send_with({**env, "SMTP_PASSWORD": "wrong"}) == "smtp config_error", "the login is the one sent"
