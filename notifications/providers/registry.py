"""Builds provider adapters by kind from Django settings, and keeps one per kind per event loop.

Every setting is read with ``getattr(settings, NAME, default)``; the full list is in
``SETTINGS_DEFAULTS`` below (credentials default to empty: an adapter without them answers
``config_error`` per send instead of failing at import).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from django.conf import settings

from notifications.providers.base import ProviderAdapter
from notifications.providers.credentials import Secret
from notifications.providers.push import PushRouter

log = logging.getLogger("notifications.providers")

#: Every setting this package reads, with its default.
SETTINGS_DEFAULTS: dict[str, Any] = {
    "PROVIDER_TIMEOUT": 10.0,  # seconds, per request; each provider may override it
    "PROVIDER_SEND_DEADLINE": None,  # seconds for a whole send(); None: the provider's own timeout
    # which adapter kind serves each channel
    "NOTIFICATION_PROVIDERS": {
        "email": "sendgrid",
        "sms": "twilio",
        "push": "push",
        "inapp": "inapp",
        "webhook": "webhook",
    },
    # e-mail (anymail: credentials and API URL come from the ANYMAIL dict, read by anymail itself)
    "NOTIFICATIONS_FROM_EMAIL": "Notifications <notifications@example.com>",
    "ANYMAIL_EMAIL_BACKEND": "",  # for kind "anymail"; empty: EMAIL_BACKEND if it is an anymail backend
    "EMAIL_SEND_THREADS": 100,
    "SENDGRID_MAX_CONNECTIONS": 200,
    "EMAIL_SEND_TIMEOUT": None,  # None: PROVIDER_TIMEOUT
    "SMTP_HOST": "127.0.0.1",
    "SMTP_PORT": 18125,
    "SMTP_USERNAME": "",
    "SMTP_PASSWORD": "",
    "SMTP_USE_TLS": False,
    "SMTP_USE_SSL": False,
    "SMTP_TIMEOUT": None,  # None: PROVIDER_TIMEOUT
    "SMTP_MAX_CONNECTIONS": 16,
    # Twilio
    "TWILIO_BASE_URL": "https://api.twilio.com",
    "TWILIO_ACCOUNT_SID": "",
    "TWILIO_AUTH_TOKEN": "",
    "TWILIO_API_KEY_SID": "",
    "TWILIO_API_KEY_SECRET": "",
    "TWILIO_FROM_NUMBER": "",
    "TWILIO_MESSAGING_SERVICE_SID": "",
    "TWILIO_STATUS_CALLBACK_URL": "",
    "TWILIO_TIMEOUT": None,  # None: PROVIDER_TIMEOUT
    "TWILIO_MAX_CONNECTIONS": 200,
    # FCM
    "FCM_BASE_URL": "https://fcm.googleapis.com",
    "FCM_SERVICE_ACCOUNT_FILE": "",
    "FCM_SERVICE_ACCOUNT_JSON": "",
    "FCM_PROJECT_ID": "",
    "FCM_TIMEOUT": None,  # None: PROVIDER_TIMEOUT
    "FCM_MAX_CONNECTIONS": 200,
    # APNs
    "APNS_BASE_URL": "https://api.push.apple.com",
    "APNS_KEY_FILE": "",
    "APNS_KEY": "",
    "APNS_KEY_ID": "",
    "APNS_TEAM_ID": "",
    "APNS_TOPIC": "",
    "APNS_TOKEN_REFRESH_SECONDS": 2400.0,
    # HTTP/2 multiplexes every push on one connection, so under load an answer can be seconds late; a
    # deadline that expires after APNs accepted the push makes the retry a duplicate (APNs has no
    # idempotency), hence a longer bound than the other providers (the push lease follows it).
    "APNS_TIMEOUT": 30.0,
    "APNS_MAX_CONNECTIONS": 4,
    "APNS_MAX_IN_FLIGHT": 32,
    # webhooks
    "WEBHOOK_SIGNING_SECRET": "",
    "WEBHOOK_TIMEOUT": None,  # None: PROVIDER_TIMEOUT
    "WEBHOOK_MAX_CONNECTIONS": 200,
    "WEBHOOK_MAX_PER_HOST": 100,
    # in-app
    "INAPP_BATCH_SIZE": 500,
    "INAPP_BATCH_WINDOW_MS": 5.0,
    "INAPP_WRITER_THREADS": 2,
}


def setting(name: str) -> Any:
    return getattr(settings, name, SETTINGS_DEFAULTS[name])


def deadline_for(timeout: float) -> float:
    """The bound on one whole ``send()`` (token exchange, retries and all).

    Defaults to the provider timeout itself, because the worker sizes its dedup lease as
    ``PROVIDER_TIMEOUT x attempts x 1.5`` (``notifications.delivery.dedup.required_lease_ms``).
    """
    value = setting("PROVIDER_SEND_DEADLINE")
    return float(value) if value is not None else timeout


#: The timeout settings of each channel's adapters (see `channel_send_bound`).
CHANNEL_TIMEOUT_SETTINGS: dict[str, tuple[str, ...]] = {
    "email": ("EMAIL_SEND_TIMEOUT", "SMTP_TIMEOUT"),
    "sms": ("TWILIO_TIMEOUT",),
    "push": ("FCM_TIMEOUT", "APNS_TIMEOUT"),
    "webhook": ("WEBHOOK_TIMEOUT",),
    "inapp": (),
}


def channel_send_bound(channel: str) -> float:
    """The longest one send of `channel` may take: the largest deadline of its providers.

    The worker sizes the channel's dedup lease on it, so a claim outlives every send it covers
    whichever provider (and per-provider timeout) the send goes to.
    """
    timeouts = [timeout_setting(name) for name in CHANNEL_TIMEOUT_SETTINGS.get(channel, ())]
    return max([deadline_for(t) for t in timeouts] or [float(setting("PROVIDER_TIMEOUT"))])


def timeout_setting(name: str) -> float:
    """A provider's own timeout, else the shared ``PROVIDER_TIMEOUT`` (the worker sizes dedup leases on it)."""
    value = setting(name)
    return float(value if value is not None else setting("PROVIDER_TIMEOUT"))


def _anymail_backend_path() -> str:
    explicit = setting("ANYMAIL_EMAIL_BACKEND")
    if explicit:
        return str(explicit)
    configured = str(getattr(settings, "EMAIL_BACKEND", "") or "")
    if configured.startswith("anymail."):
        return configured
    from notifications.providers.email_anymail import SENDGRID_BACKEND

    return SENDGRID_BACKEND


def build_sendgrid() -> ProviderAdapter:
    from notifications.providers.email_sendgrid import DEFAULT_API_URL, SendGridEmailAdapter

    anymail = getattr(settings, "ANYMAIL", None) or {}  # where SendGrid's key and URL are configured
    return SendGridEmailAdapter(
        api_key=anymail.get("SENDGRID_API_KEY") or "",
        api_url=anymail.get("SENDGRID_API_URL") or DEFAULT_API_URL,
        from_email=setting("NOTIFICATIONS_FROM_EMAIL"),
        timeout=timeout_setting("EMAIL_SEND_TIMEOUT"),
        max_connections=int(setting("SENDGRID_MAX_CONNECTIONS")),
        deadline=deadline_for(timeout_setting("EMAIL_SEND_TIMEOUT")),
    )


def build_anymail() -> ProviderAdapter:
    from notifications.providers.email_anymail import AnymailEmailAdapter

    return AnymailEmailAdapter(
        backend=_anymail_backend_path(),
        from_email=setting("NOTIFICATIONS_FROM_EMAIL"),
        timeout=timeout_setting("EMAIL_SEND_TIMEOUT"),
        max_workers=int(setting("EMAIL_SEND_THREADS")),
    )


def build_smtp() -> ProviderAdapter:
    from notifications.providers.email_smtp import SmtpEmailAdapter

    return SmtpEmailAdapter(
        from_email=setting("NOTIFICATIONS_FROM_EMAIL"),
        host=setting("SMTP_HOST"),
        port=int(setting("SMTP_PORT")),
        username=setting("SMTP_USERNAME"),
        password=setting("SMTP_PASSWORD"),
        use_tls=bool(setting("SMTP_USE_TLS")),
        use_ssl=bool(setting("SMTP_USE_SSL")),
        timeout=timeout_setting("SMTP_TIMEOUT"),
        max_workers=int(setting("SMTP_MAX_CONNECTIONS")),
    )


def build_twilio() -> ProviderAdapter:
    from notifications.providers.sms_twilio import TwilioSmsAdapter

    api_key_sid = setting("TWILIO_API_KEY_SID")
    return TwilioSmsAdapter(
        account_sid=setting("TWILIO_ACCOUNT_SID"),
        auth_token=setting("TWILIO_API_KEY_SECRET") if api_key_sid else setting("TWILIO_AUTH_TOKEN"),
        api_key_sid=api_key_sid,
        from_number=setting("TWILIO_FROM_NUMBER"),
        messaging_service_sid=setting("TWILIO_MESSAGING_SERVICE_SID"),
        status_callback=setting("TWILIO_STATUS_CALLBACK_URL"),
        base_url=setting("TWILIO_BASE_URL"),
        timeout=timeout_setting("TWILIO_TIMEOUT"),
        deadline=deadline_for(timeout_setting("TWILIO_TIMEOUT")),
        max_connections=int(setting("TWILIO_MAX_CONNECTIONS")),
    )


def build_fcm() -> ProviderAdapter:
    from notifications.providers.push_fcm import FcmPushAdapter, ServiceAccount

    account = None
    try:
        if setting("FCM_SERVICE_ACCOUNT_JSON"):
            account = ServiceAccount.from_json(setting("FCM_SERVICE_ACCOUNT_JSON"))
        elif setting("FCM_SERVICE_ACCOUNT_FILE"):
            account = ServiceAccount.from_file(setting("FCM_SERVICE_ACCOUNT_FILE"))
    except (OSError, ValueError) as exc:  # every send answers config_error; the other providers keep working
        log.warning("FCM service account unusable: %s", type(exc).__name__, extra={"provider": "fcm"})
    return FcmPushAdapter(
        service_account=account,
        project_id=setting("FCM_PROJECT_ID"),
        base_url=setting("FCM_BASE_URL"),
        timeout=timeout_setting("FCM_TIMEOUT"),
        deadline=deadline_for(timeout_setting("FCM_TIMEOUT")),
        max_connections=int(setting("FCM_MAX_CONNECTIONS")),
    )


def build_apns() -> ProviderAdapter:
    from notifications.providers.push_apns import ApnsPushAdapter, load_apns_key

    try:
        signing_key = load_apns_key(key=setting("APNS_KEY"), key_file=setting("APNS_KEY_FILE"))
    except OSError as exc:  # every send answers config_error; the other providers keep working
        log.warning("APNs signing key unreadable: %s", type(exc).__name__, extra={"provider": "apns"})
        signing_key = Secret("")
    return ApnsPushAdapter(
        signing_key=signing_key,
        key_id=setting("APNS_KEY_ID"),
        team_id=setting("APNS_TEAM_ID"),
        topic=setting("APNS_TOPIC"),
        base_url=setting("APNS_BASE_URL"),
        token_refresh=float(setting("APNS_TOKEN_REFRESH_SECONDS")),
        timeout=timeout_setting("APNS_TIMEOUT"),
        deadline=deadline_for(timeout_setting("APNS_TIMEOUT")),
        max_connections=int(setting("APNS_MAX_CONNECTIONS")),
        max_in_flight=int(setting("APNS_MAX_IN_FLIGHT")),
    )


def build_push() -> ProviderAdapter:
    return PushRouter({"fcm": build_fcm(), "apns": build_apns()})


def build_webhook() -> ProviderAdapter:
    from notifications.providers.webhook import WebhookAdapter

    return WebhookAdapter(
        signing_secret=setting("WEBHOOK_SIGNING_SECRET"),
        timeout=timeout_setting("WEBHOOK_TIMEOUT"),
        deadline=deadline_for(timeout_setting("WEBHOOK_TIMEOUT")),
        max_connections=int(setting("WEBHOOK_MAX_CONNECTIONS")),
        max_per_host=int(setting("WEBHOOK_MAX_PER_HOST")),
    )


def build_inapp() -> ProviderAdapter:
    from notifications.providers.inapp import InAppAdapter

    return InAppAdapter(
        batch_size=int(setting("INAPP_BATCH_SIZE")),
        batch_window=float(setting("INAPP_BATCH_WINDOW_MS")) / 1000.0,
        writer_threads=int(setting("INAPP_WRITER_THREADS")),
    )


BUILDERS: dict[str, Callable[[], ProviderAdapter]] = {
    "sendgrid": build_sendgrid,
    "anymail": build_anymail,
    "smtp": build_smtp,
    "twilio": build_twilio,
    "fcm": build_fcm,
    "apns": build_apns,
    "push": build_push,
    "webhook": build_webhook,
    "inapp": build_inapp,
}
ADAPTER_KINDS: tuple[str, ...] = tuple(BUILDERS)


class UnknownProviderError(KeyError):
    """No adapter kind by that name."""


def build_adapter(kind: str) -> ProviderAdapter:
    """A new adapter of ``kind`` configured from settings (the caller owns it and must ``aclose`` it)."""
    try:
        builder = BUILDERS[kind]
    except KeyError:
        raise UnknownProviderError(f"unknown provider kind {kind!r}; known: {', '.join(ADAPTER_KINDS)}") from None
    return builder()


# Adapters own pooled clients bound to the loop that uses them, so the cache is per event loop.
_adapters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, ProviderAdapter]] = (
    weakref.WeakKeyDictionary()
)


def adapter_for(kind: str) -> ProviderAdapter:
    """The shared adapter of ``kind`` for the running event loop (built on first use)."""
    loop = asyncio.get_running_loop()
    per_loop = _adapters.setdefault(loop, {})
    adapter = per_loop.get(kind)
    if adapter is None:
        if kind == "push":  # share the loop's FCM and APNs adapters (and their pools) with direct users
            adapter = PushRouter({"fcm": adapter_for("fcm"), "apns": adapter_for("apns")}, owns_adapters=False)
        else:
            adapter = build_adapter(kind)
        per_loop[kind] = adapter
    return adapter


def adapter_for_channel(channel: str) -> ProviderAdapter:
    """The adapter configured for a channel (``NOTIFICATION_PROVIDERS``)."""
    kinds = {**SETTINGS_DEFAULTS["NOTIFICATION_PROVIDERS"], **(setting("NOTIFICATION_PROVIDERS") or {})}
    try:
        kind = kinds[channel]
    except KeyError:
        raise UnknownProviderError(f"no provider configured for channel {channel!r}") from None
    return adapter_for(kind)


async def close_adapters() -> None:
    """Close every shared adapter of the running loop (call at worker shutdown)."""
    per_loop = _adapters.pop(asyncio.get_running_loop(), {})
    await asyncio.gather(*(adapter.aclose() for adapter in per_loop.values()), return_exceptions=True)
