"""Throwaway credentials the sandboxes accept: fixed keys and secrets, an FCM service account, an APNs key.

The fixed values are the ones `platform/sandbox.env` gives the platform. The key files hold
real-looking key material (an RS256 service-account key to mint OAuth2 assertions, an ES256 key to
sign APNs provider tokens), generated locally; they never leave the machine.
`python -m provider_sandbox.credentials` writes the ones that file names. Plain Python: no Django.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

FCM_PROJECT_ID = "sandbox-project"
APNS_KEY_ID = "SANDBOXKEY"
APNS_TEAM_ID = "SANDBOXTEAM"
APNS_TOPIC = "com.example.notifications"
TWILIO_ACCOUNT_SID = "AC" + "5a" * 16
TWILIO_AUTH_TOKEN = "sandbox-twilio-token"  # noqa: S105 - the sandbox's throwaway credential
SENDGRID_API_KEY = "SG.sandbox-key"
#: Standard Webhooks secret (base64 of 24 fixed bytes), sandbox only.
WEBHOOK_SECRET = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldC0xMjM0"  # noqa: S105 - the sandbox's throwaway credential
FCM_SERVICE_ACCOUNT_FILENAME = "fcm-service-account.json"
APNS_KEY_FILENAME = f"AuthKey_{APNS_KEY_ID}.p8"


@dataclass(frozen=True)
class SandboxCredentials:
    fcm_service_account_file: Path
    apns_key_file: Path


def ensure_sandbox_credentials(directory: Path, *, fcm_token_uri: str) -> SandboxCredentials:
    """Create the key files under `directory` if missing (idempotent); rewrite the token URI."""
    directory.mkdir(parents=True, exist_ok=True)
    fcm_file = directory / FCM_SERVICE_ACCOUNT_FILENAME
    apns_file = directory / APNS_KEY_FILENAME
    if fcm_file.exists():
        account = json.loads(fcm_file.read_text())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        account = {
            "type": "service_account",
            "project_id": FCM_PROJECT_ID,
            "private_key_id": "sandbox",
            "private_key": pem,
            "client_email": f"notifications@{FCM_PROJECT_ID}.iam.gserviceaccount.com",
            "client_id": "0",
        }
    account["token_uri"] = fcm_token_uri
    fcm_file.write_text(json.dumps(account, indent=2))
    fcm_file.chmod(0o600)
    if not apns_file.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        apns_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        apns_file.chmod(0o600)
    return SandboxCredentials(fcm_service_account_file=fcm_file, apns_key_file=apns_file)


def main() -> int:
    """Write the key files `platform/sandbox.env` names, for the FCM sandbox at its `FCM_BASE_URL`."""
    from provider_sandbox.platform_env import provider_env

    env = provider_env()
    wanted = SandboxCredentials(Path(env["FCM_SERVICE_ACCOUNT_FILE"]), Path(env["APNS_KEY_FILE"]))
    written = ensure_sandbox_credentials(
        wanted.fcm_service_account_file.parent, fcm_token_uri=f"{env['FCM_BASE_URL'].rstrip('/')}/token"
    )
    if written != wanted:
        sys.stderr.write(f"platform/sandbox.env names {wanted}, but the sandbox writes {written}\n")
        return 1
    print(f"sandbox credentials: {written.fcm_service_account_file}, {written.apns_key_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
