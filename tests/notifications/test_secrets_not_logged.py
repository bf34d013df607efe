"""Provider credentials, API keys and tokens never show in log output or in the headers of parked and
dead-lettered messages, whatever a send did: sent, refused, rejected the credentials, or never connected.

Every credential is a recognisable value made up per test; the logs are captured at DEBUG (the root
logger, as `LOG_LEVEL=DEBUG` sets it, under the project's LOGGING) both as the JSON formatter writes
them and as pytest's caplog renders them (tracebacks included).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings as django_settings
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from rest_framework.test import APIClient

from notifications.bus.config import producer_config
from notifications.bus.topics import channel_topic, delivery_topic
from notifications.delivery.wiring import build_worker_runner
from notifications.dispatch.messages import channel_message
from notifications.dlq.paging import Page, pager_from_settings
from notifications.log_format import JsonFormatter
from notifications.models import ApiKey, DeliveryLog, Provider
from notifications.priority import Lane
from notifications.providers import registry
from tests.kafka_helpers import consume_matching
from tests.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SMTP_USER = "mailer"
#: A port nothing listens on: every send to it fails to connect.
CLOSED = "127.0.0.1:9"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _hpack_huffman(value: str) -> str:
    """How a header value shows in a printed HPACK header block: Huffman-coded bytes, as `repr` writes them."""
    encoded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(value.encode())
    return repr(encoded)[2:42]  # a stretch well inside, clear of the quote `repr` picks


def _pem_pair(key) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@dataclass
class Credentials:
    """The made-up credentials of one test, and the forms in which each would betray itself."""

    sendgrid_key: str = field(default_factory=lambda: f"SG.sendgrid-secret-{secrets.token_hex(12)}")
    twilio_token: str = field(default_factory=lambda: f"twilio-secret-{secrets.token_hex(12)}")
    smtp_password: str = field(default_factory=lambda: f"smtp-secret-{secrets.token_hex(12)}")
    webhook_key: str = field(default_factory=lambda: f"webhook-secret-{secrets.token_hex(12)}")
    django_secret: str = field(default_factory=lambda: f"django-secret-{secrets.token_hex(16)}")
    fcm_pem: tuple[str, str] = field(default_factory=lambda: _pem_pair(rsa.generate_private_key(65537, 2048)))
    apns_pem: tuple[str, str] = field(default_factory=lambda: _pem_pair(ec.generate_private_key(ec.SECP256R1())))
    #: Issued while the test runs: producer API keys, the FCM access token, the APNs provider token.
    issued: dict[str, str] = field(default_factory=dict)

    @property
    def webhook_secret(self) -> str:
        return "whsec_" + _b64(self.webhook_key)

    def forms(self) -> dict[str, str]:
        """label -> a string that must appear in no log line and no header."""
        plain = {
            "SendGrid API key": self.sendgrid_key,
            "Twilio auth token": self.twilio_token,
            "SMTP password": self.smtp_password,
            "webhook signing key": self.webhook_key,
            "webhook signing secret": self.webhook_secret,
            "Django SECRET_KEY": self.django_secret,
            **self.issued,
        }
        forms = {}
        for label, value in plain.items():
            forms[label] = value
            forms[f"{label} (base64)"] = _b64(value)
            forms[f"{label} (base64url)"] = base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")
        sid = django_settings.TWILIO_ACCOUNT_SID
        forms["Twilio Basic credentials"] = _b64(f"{sid}:{self.twilio_token}")
        forms["SMTP AUTH PLAIN"] = _b64(f"\0{SMTP_USER}\0{self.smtp_password}")
        apns = self.issued.get("APNs provider token")
        if apns:  # as an HTTP/2 header block carries it (HPACK Huffman), which a debug log may print
            forms["APNs authorization header (HPACK)"] = _hpack_huffman(f"bearer {apns}")
        for label, pem in (("FCM private key", self.fcm_pem[0]), ("APNs private key", self.apns_pem[0])):
            body = [line for line in pem.splitlines() if line and not line.startswith("-----")]
            forms.update({f"{label} (line {n})": line for n, line in enumerate(body, 1) if len(line) >= 24})
        return forms


@pytest.fixture
def credentials(settings, sandbox) -> Iterator[Credentials]:
    """Made-up credentials configured for every provider (as config/settings.py would read them) and the
    sandboxes accepting them."""
    creds = Credentials()
    settings.ANYMAIL = {**settings.ANYMAIL, "SENDGRID_API_KEY": creds.sendgrid_key}
    settings.TWILIO_AUTH_TOKEN = creds.twilio_token
    settings.SMTP_USERNAME, settings.SMTP_PASSWORD = SMTP_USER, creds.smtp_password
    settings.WEBHOOK_SIGNING_SECRET = creds.webhook_secret
    settings.SECRET_KEY = creds.django_secret
    settings.FCM_SERVICE_ACCOUNT_JSON = json.dumps(
        {
            "type": "service_account",
            "project_id": settings.FCM_PROJECT_ID,
            "private_key_id": "k1",
            "private_key": creds.fcm_pem[0],
            "client_email": "sender@sandbox-project.iam.gserviceaccount.com",
            "token_uri": f"{sandbox.url('fcm')}/token",
        }
    )
    settings.APNS_KEY, settings.APNS_KEY_FILE = creds.apns_pem[0], ""
    accept(sandbox, creds)
    yield creds
    for name in ("sendgrid", "twilio", "fcm", "apns", "webhook", "smtp"):
        sandbox.client(name).reset(config=True)


def accept(sandbox, creds: Credentials) -> None:
    """The sandboxes accept exactly these credentials."""
    sandbox.client("sendgrid").configure(options={"api_keys": [creds.sendgrid_key]})
    sandbox.client("twilio").configure(options={"accounts": {django_settings.TWILIO_ACCOUNT_SID: creds.twilio_token}})
    sandbox.client("smtp").configure(options={"auth": {SMTP_USER: creds.smtp_password}})
    sandbox.client("webhook").configure(options={"secret": creds.webhook_secret})
    sandbox.client("fcm").configure(options={"public_key_pem": creds.fcm_pem[1]})
    sandbox.client("apns").configure(options={"public_key_pem": creds.apns_pem[1]})


def reject(sandbox) -> None:
    """The sandboxes accept other credentials than ours (rotated on their side)."""
    other = Credentials()
    accept(sandbox, other)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logs(caplog) -> Iterator[Callable[[], str]]:
    """Everything logged during the test, as the JSON formatter writes it and as caplog renders it."""
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    try:
        yield lambda: "\n".join([*handler.lines, caplog.text])
    finally:
        root.removeHandler(handler)


def assert_no_secret(text: str, creds: Credentials, where: str) -> None:
    leaked = sorted(label for label, value in creds.forms().items() if value and value in text)
    if leaked:
        pytest.fail(f"{where} shows: {', '.join(leaked)}", pytrace=False)


# --- adapters ---------------------------------------------------------------------------------------
KINDS = ("sendgrid", "anymail", "smtp", "twilio", "fcm", "apns", "webhook")


def _message(channel: str, to: dict, content: dict) -> dict:
    return channel_message(
        event_id=str(uuid.uuid4()),
        user_id=7,
        channel=channel,
        type="order.shipped",
        category="transactional",
        urgency="normal",
        priority="transactional",
        created_at="2026-11-25T10:00:00+00:00",
        locale="en",
        to=to,
        content=content,
        platform=to.get("platform"),
    )


def messages_for(kind: str, recipient: str, webhook_base: str) -> dict:
    """One message to `recipient` (a sandbox trigger such as `invalid` or `fail503-1`, or a plain name)."""
    if kind in ("sendgrid", "anymail", "smtp"):
        return _message("email", {"email": f"{recipient}@example.com"}, {"subject": "Shipped", "body": "On its way"})
    if kind == "twilio":
        phone = {"ok": "+4915112345678", "invalid": "+15005550001", "fail503-1": "+15005555100"}[recipient]
        return _message("sms", {"phone": phone}, {"body": "Shipped"})
    if kind in ("fcm", "apns"):
        token = f"{recipient}-{uuid.uuid4().hex}"
        return _message("push", {"platform": kind, "devices": [[kind, token]]}, {"title": "Shipped", "body": "Yes"})
    return _message("webhook", {"url": f"{webhook_base}/hooks/{recipient}"}, {"payload": {"order": 42}})


async def send_through_every_adapter(recipients: tuple[str, ...], webhook_base: str) -> dict[str, list[str]]:
    """Fresh adapters of every kind, built from settings, each sending one message per recipient."""
    adapters = {kind: registry.build_adapter(kind) for kind in KINDS}
    outcomes: dict[str, list[str]] = {}
    try:
        for kind, adapter in adapters.items():
            results = [await adapter.send(messages_for(kind, r, webhook_base)) for r in recipients]
            outcomes[kind] = [str(result.outcome) for result in results]
        issued_fcm = adapters["fcm"]._access_token
        issued_apns = adapters["apns"]._token
    finally:
        await asyncio.gather(*(adapter.aclose() for adapter in adapters.values()))
    outcomes["_issued"] = [issued_fcm.reveal() if issued_fcm else "", issued_apns or ""]
    # What a log line or a traceback's locals would show of them (and of the FCM service account).
    outcomes["_reprs"] = [repr(adapter) for adapter in adapters.values()] + [repr(adapters["fcm"].service_account)]
    return outcomes


def test_sends_refusals_rejected_credentials_and_dead_connections_log_no_secret(
    credentials, logs, sandbox, settings
) -> None:
    webhook = sandbox.url("webhook")
    accepted = asyncio.run(send_through_every_adapter(("ok", "invalid", "fail503-1"), webhook))
    fcm_token, apns_token = accepted.pop("_issued")
    credentials.issued.update({"FCM access token": fcm_token, "APNs provider token": apns_token})
    assert fcm_token and apns_token, "both push adapters authenticated"
    assert_no_secret("\n".join(accepted.pop("_reprs")), credentials, "the adapters' repr")
    assert all(outcomes[0] == "sent" for outcomes in accepted.values()), accepted

    reject(sandbox)
    rejected = asyncio.run(send_through_every_adapter(("ok",), webhook))
    rejected.pop("_issued"), rejected.pop("_reprs")
    assert all(outcomes != ["sent"] for outcomes in rejected.values()), rejected

    accept(sandbox, credentials)  # the FCM token exchange succeeds; every send then finds nobody listening
    settings.ANYMAIL = {**settings.ANYMAIL, "SENDGRID_API_URL": f"http://{CLOSED}/v3/"}
    settings.TWILIO_BASE_URL = settings.FCM_BASE_URL = settings.APNS_BASE_URL = f"http://{CLOSED}"
    settings.SMTP_PORT = 9
    unreachable = asyncio.run(send_through_every_adapter(("ok",), f"http://{CLOSED}"))
    unreachable.pop("_issued"), unreachable.pop("_reprs")
    assert all(outcomes == ["transient"] for outcomes in unreachable.values()), unreachable

    output = logs()
    for kind in ("sendgrid", "smtp", "twilio", "fcm", "apns", "webhook"):
        assert f'"provider":"{kind}"' in output, f"the failed sends of {kind} were logged"
    assert_no_secret(output, credentials, "the log output")


# --- the worker: parked and dead-lettered messages ---------------------------------------------------
WORKER_PROVIDERS = {
    "email": Provider(name="sendgrid", channel="email", kind="sendgrid", rate=1000, burst=50),
    "sms": Provider(name="twilio", channel="sms", kind="twilio", rate=1000, burst=50),
    "push": Provider(name="fcm", channel="push", kind="fcm", rate=1000, burst=50),
    "webhook": Provider(name="webhook", channel="webhook", kind="webhook", rate=1000, burst=50),
}
CHANNEL_KIND = {"email": "sendgrid", "sms": "twilio", "push": "fcm", "webhook": "webhook"}


def _status(m: dict) -> str | None:
    row = DeliveryLog.objects.filter(event_id=m["event_id"], user_id=m["user_id"], channel=m["channel"]).first()
    return row.status if row else None


@pytest.mark.parametrize("channel", sorted(WORKER_PROVIDERS))
def test_parked_and_dead_lettered_messages_carry_no_secret_in_their_headers(
    channel, credentials, logs, sandbox, running, topics
) -> None:
    Provider.objects.bulk_create([WORKER_PROVIDERS[channel]])
    kind = CHANNEL_KIND[channel]
    webhook = sandbox.url("webhook")
    invalid = messages_for(kind, "invalid", webhook)
    refused = messages_for(kind, "ok", webhook)
    producer = Producer(producer_config())

    def produce(m: dict) -> None:
        producer.produce(delivery_topic(channel, Lane.PRIORITY), key=b"7", value=orjson.dumps(m))
        assert producer.flush(30) == 0

    with running(build_worker_runner(channel, group=f"w-{uuid.uuid4().hex[:6]}")):
        reject(sandbox)
        produce(refused)  # rejected credentials: parked for a retry (dead-lettered by a webhook's 401)
        wait_for(lambda: _status(refused) in ("retrying", "dlq"), timeout=30)
        refused_status = _status(refused)
        accept(sandbox, credentials)
        produce(invalid)  # accepted credentials, refused recipient: dead-lettered
        wait_for(lambda: _status(invalid) == "dlq", timeout=30)
    dead_letters = 1 + (refused_status == "dlq")
    dead = consume_matching(channel_topic(channel, "dlq"), lambda x: True, expected=dead_letters)
    parked = consume_matching(delivery_topic(channel, Lane.PRIORITY, "5s"), lambda x: True, expected=2 - dead_letters)
    assert len(dead) + len(parked) == 2
    headers = [(k, v.decode()) for message in [*dead, *parked] for k, v in message.headers() or []]
    assert {k for k, _ in headers} >= {"errors", "error-class"}, headers
    assert_no_secret(repr(headers), credentials, "the dead-letter and retry headers")
    assert_no_secret(logs(), credentials, "the worker's log output")


# --- the ingest API ----------------------------------------------------------------------------------
def test_api_requests_with_good_bad_and_revoked_keys_log_no_key(credentials, logs, notification_type) -> None:
    _key, good = ApiKey.generate(service="orders")
    revoked, revoked_raw = ApiKey.generate(service="billing")
    revoked.revoked_at = revoked.created_at
    revoked.save()
    wrong = f"np_{good.split('_')[1]}_{secrets.token_urlsafe(32)}"
    credentials.issued.update({"API key": good, "wrong API key": wrong, "revoked API key": revoked_raw})
    body = {"event_id": "order-1-shipped", "type": "order.shipped", "recipients": ["42"], "data": {}}
    statuses = []
    for header in (f"Api-Key {good}", f"Api-Key {wrong}", f"Api-Key {revoked_raw}", f"Bearer {good}"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=header)
        statuses.append(client.post("/api/v1/events", body, format="json").status_code)
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=wrong)
    statuses.append(client.post("/api/v1/events", {"type": 1}, format="json").status_code)
    assert statuses[0] == 202 and all(s >= 400 for s in statuses[1:3]), statuses
    output = logs()
    assert output.strip(), "the refused requests were logged"
    assert_no_secret(output, credentials, "the log output")


# --- a process starting up with every credential in its environment -----------------------------------
def test_a_worker_starting_at_debug_level_logs_no_secret(credentials, subprocess_env, sandbox, tmp_path) -> None:
    env = {
        **subprocess_env,
        **sandbox.env,
        "LOG_LEVEL": "DEBUG",
        "DJANGO_SECRET_KEY": credentials.django_secret,
        "SENDGRID_API_KEY": credentials.sendgrid_key,
        "TWILIO_AUTH_TOKEN": credentials.twilio_token,
        "SMTP_USERNAME": SMTP_USER,
        "SMTP_PASSWORD": credentials.smtp_password,
        "WEBHOOK_SIGNING_SECRET": credentials.webhook_secret,
        "FCM_SERVICE_ACCOUNT_JSON": django_settings.FCM_SERVICE_ACCOUNT_JSON,
        "APNS_KEY": credentials.apns_pem[0],
        "APNS_KEY_FILE": "",
        "PYTHONPATH": str(ROOT),
    }
    log_file = tmp_path / "worker.log"
    with log_file.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "run_worker", "--channel", "push"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: "partitions assigned" in log_file.read_text() or proc.poll() is not None, timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    output = log_file.read_text()
    assert "consumer started" in output, output[-2000:]
    assert_no_secret(output, credentials, "the worker's start-up output")


# --- paging on-call --------------------------------------------------------------------------------
def _page() -> Page:
    return Page(
        fingerprint=uuid.uuid4().hex[:16],
        count=1,
        entry_id=1,
        channel="sms",
        provider="twilio",
        error_class="permanent",
        cause_class="",
        error_code="x",
        error_message="refused",
        recipient="+4915112345678",
        event_id=str(uuid.uuid4()),
    )


def test_a_failing_page_webhook_logs_no_token_of_its_url(credentials, logs, sandbox, settings) -> None:
    """Chat webhooks (Slack, Teams) carry their credential in the URL; httpx's errors quote the URL."""
    token = f"page-hook-secret-{secrets.token_hex(12)}"
    credentials.issued["DLQ page webhook URL token"] = token
    settings.DLQ_PAGE_EMAILS = []
    for url in (f"{sandbox.url('webhook')}/hooks/invalid/{token}", f"http://{CLOSED}/hooks/{token}"):
        settings.DLQ_PAGE_WEBHOOK_URL = url
        pager_from_settings().page(_page())
    output = logs()
    assert output.count("page webhook failed") >= 2, "both pages failed and were logged"
    assert_no_secret(output, credentials, "the log output")
