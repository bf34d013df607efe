"""`platform/sandbox.env`: the sandboxes' own credentials and ports, pointed at any sandbox, key files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provider_sandbox import credentials, platform_env
from provider_sandbox.config import DEFAULT_PORTS
from provider_sandbox.credentials import SandboxCredentials
from provider_sandbox.platform_env import provider_env, read_env_file
from provider_sandbox.process import REPO_ROOT


def test_the_env_file_gives_the_platform_the_sandboxes_credentials_and_default_ports() -> None:
    env = read_env_file()
    assert env["SENDGRID_API_KEY"] == credentials.SENDGRID_API_KEY
    assert (env["TWILIO_ACCOUNT_SID"], env["TWILIO_AUTH_TOKEN"]) == (
        credentials.TWILIO_ACCOUNT_SID,
        credentials.TWILIO_AUTH_TOKEN,
    )
    assert env["FCM_PROJECT_ID"] == credentials.FCM_PROJECT_ID
    assert (env["APNS_KEY_ID"], env["APNS_TEAM_ID"], env["APNS_TOPIC"]) == (
        credentials.APNS_KEY_ID,
        credentials.APNS_TEAM_ID,
        credentials.APNS_TOPIC,
    )
    assert env["WEBHOOK_SIGNING_SECRET"] == credentials.WEBHOOK_SECRET
    assert env["SENDGRID_API_URL"] == f"http://127.0.0.1:{DEFAULT_PORTS['sendgrid']}/v3/"
    assert env["TWILIO_BASE_URL"] == f"http://127.0.0.1:{DEFAULT_PORTS['twilio']}"
    assert env["FCM_BASE_URL"] == f"http://127.0.0.1:{DEFAULT_PORTS['fcm']}"
    assert env["APNS_BASE_URL"] == f"http://127.0.0.1:{DEFAULT_PORTS['apns']}"
    assert (env["SMTP_HOST"], env["SMTP_PORT"]) == ("127.0.0.1", str(DEFAULT_PORTS["smtp"]))
    fcm_file, apns_file = Path(env["FCM_SERVICE_ACCOUNT_FILE"]), Path(env["APNS_KEY_FILE"])
    assert fcm_file.parent == apns_file.parent
    assert (fcm_file.name, apns_file.name) == (credentials.FCM_SERVICE_ACCOUNT_FILENAME, credentials.APNS_KEY_FILENAME)


def test_provider_env_points_the_platform_at_a_sandbox_on_other_ports(tmp_path: Path) -> None:
    urls = {
        "sendgrid": "http://127.0.0.1:41001",
        "twilio": "http://127.0.0.1:41002",
        "fcm": "http://127.0.0.1:41003",
        "apns": "http://127.0.0.1:41004",
        "webhook": "http://127.0.0.1:41005",
        "smtp": "smtp://127.0.0.1:41025",
        "smtp_control": "http://127.0.0.1:41026",
    }
    keys = SandboxCredentials(tmp_path / "fcm.json", tmp_path / "apns.p8")
    env = provider_env(urls, credentials=keys)
    assert env["SENDGRID_API_URL"] == "http://127.0.0.1:41001/v3/"
    assert env["TWILIO_BASE_URL"] == "http://127.0.0.1:41002"
    assert env["FCM_BASE_URL"] == "http://127.0.0.1:41003"
    assert env["APNS_BASE_URL"] == "http://127.0.0.1:41004"
    assert (env["SMTP_HOST"], env["SMTP_PORT"]) == ("127.0.0.1", "41025")
    assert (env["FCM_SERVICE_ACCOUNT_FILE"], env["APNS_KEY_FILE"]) == (
        str(keys.fcm_service_account_file),
        str(keys.apns_key_file),
    )
    assert env["TWILIO_AUTH_TOKEN"] == credentials.TWILIO_AUTH_TOKEN


def test_key_file_paths_are_absolute_from_the_repository_root() -> None:
    env = provider_env()
    assert Path(env["FCM_SERVICE_ACCOUNT_FILE"]) == REPO_ROOT / read_env_file()["FCM_SERVICE_ACCOUNT_FILE"]
    assert Path(env["APNS_KEY_FILE"]).is_absolute()


def test_credentials_command_writes_the_key_files_the_env_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = read_env_file()
    env_file = tmp_path / "sandbox.env"
    monkeypatch.setattr(platform_env, "ENV_FILE", env_file)
    env["FCM_SERVICE_ACCOUNT_FILE"] = str(tmp_path / "keys" / credentials.FCM_SERVICE_ACCOUNT_FILENAME)
    env["APNS_KEY_FILE"] = str(tmp_path / "keys" / credentials.APNS_KEY_FILENAME)
    env_file.write_text("# a comment\n\n" + "".join(f"{key}={value}\n" for key, value in env.items()))

    assert credentials.main() == 0
    account = json.loads(Path(env["FCM_SERVICE_ACCOUNT_FILE"]).read_text())
    assert (account["token_uri"], account["project_id"]) == (f"{env['FCM_BASE_URL']}/token", credentials.FCM_PROJECT_ID)
    assert Path(env["APNS_KEY_FILE"]).read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert "sandbox credentials:" in capsys.readouterr().out

    renamed = {**env, "FCM_SERVICE_ACCOUNT_FILE": str(tmp_path / "keys" / "fcm.json")}
    env_file.write_text("".join(f"{key}={value}\n" for key, value in renamed.items()))
    assert credentials.main() == 1, "a file name the sandbox does not write is refused"
    assert "platform/sandbox.env names" in capsys.readouterr().err


def test_a_line_that_is_not_key_value_is_refused(tmp_path: Path) -> None:
    env_file = tmp_path / "sandbox.env"
    env_file.write_text("export SENDGRID_API_KEY=x\n")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        read_env_file(env_file)
