"""The platform's provider settings that point it at the sandboxes: `platform/sandbox.env`, read as a dict.

Tests and benchmarks start their own sandbox on free ports; `provider_env(urls, credentials=…)` is
that file with those URLs and key files, as the environment of a platform process.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from provider_sandbox.process import REPO_ROOT

if TYPE_CHECKING:
    from provider_sandbox.credentials import SandboxCredentials

ENV_FILE = REPO_ROOT / "platform" / "sandbox.env"
#: Settings holding a file path; a relative one is relative to the repository root.
PATH_SETTINGS = ("FCM_SERVICE_ACCOUNT_FILE", "APNS_KEY_FILE")


def read_env_file(path: Path | None = None) -> dict[str, str]:
    """`KEY=VALUE` lines of `path` (default `platform/sandbox.env`); blank lines and `#` comments are
    skipped. Kept that plain because bash sources the same file."""
    path = path or ENV_FILE
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        values[key] = value
    return values


def provider_env(
    urls: Mapping[str, str] | None = None, *, credentials: SandboxCredentials | None = None
) -> dict[str, str]:
    """The platform's provider settings for sandboxes listening at `urls` (`SandboxProcess.urls`; a
    provider left out keeps the default port) and the key files of `credentials`."""
    env = read_env_file()
    for name in PATH_SETTINGS:
        env[name] = str(REPO_ROOT / env[name])
    urls = urls or {}
    if "sendgrid" in urls:
        env["SENDGRID_API_URL"] = f"{urls['sendgrid']}/v3/"
    if "twilio" in urls:
        env["TWILIO_BASE_URL"] = urls["twilio"]
    if "fcm" in urls:
        env["FCM_BASE_URL"] = urls["fcm"]
    if "apns" in urls:
        env["APNS_BASE_URL"] = urls["apns"]
    if "smtp" in urls:
        smtp = urlsplit(urls["smtp"])
        env["SMTP_HOST"], env["SMTP_PORT"] = str(smtp.hostname), str(smtp.port)
    if credentials is not None:
        env["FCM_SERVICE_ACCOUNT_FILE"] = str(credentials.fcm_service_account_file)
        env["APNS_KEY_FILE"] = str(credentials.apns_key_file)
    return env
