"""Throwaway provider credentials for the sandboxes: an FCM service account and an APNs .p8 key.

Real adapters need real-looking key material (an RS256 service-account key to mint OAuth2
assertions, an ES256 key to sign APNs provider tokens). These are generated locally, never leave
the machine, and are accepted by the sandboxes only. Plain Python: no Django.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

FCM_PROJECT_ID = "sandbox-project"
APNS_KEY_ID = "SANDBOXKEY"
APNS_TEAM_ID = "SANDBOXTEAM"
APNS_TOPIC = "com.example.notifications"
TWILIO_ACCOUNT_SID = "AC" + "5a" * 16
TWILIO_AUTH_TOKEN = "sandbox-twilio-token"
SENDGRID_API_KEY = "SG.sandbox-key"
#: Standard Webhooks secret (base64 of 24 fixed bytes), sandbox only.
WEBHOOK_SECRET = "whsec_c2FuZGJveC13ZWJob29rLXNlY3JldC0xMjM0"


@dataclass(frozen=True)
class SandboxCredentials:
    fcm_service_account_file: Path
    apns_key_file: Path


def ensure_sandbox_credentials(directory: Path, *, fcm_token_uri: str) -> SandboxCredentials:
    """Create the key files under `directory` if missing (idempotent); rewrite the token URI."""
    directory.mkdir(parents=True, exist_ok=True)
    fcm_file = directory / "fcm-service-account.json"
    apns_file = directory / f"AuthKey_{APNS_KEY_ID}.p8"
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
