"""Provider adapters: one per provider (SendGrid/anymail, SMTP, Twilio, FCM, APNs, webhooks, in-app) behind one
async interface, ``await adapter.send(message) -> SendResult``; see ``base.py`` and ``registry.py``."""

from notifications.providers.base import (
    ConfigurationError,
    InvalidContactError,
    InvalidMessageError,
    PermanentError,
    ProviderAdapter,
    ProviderError,
    RateLimitedError,
    SendOutcome,
    SendResult,
    TransientError,
)

__all__ = [
    "ConfigurationError",
    "InvalidContactError",
    "InvalidMessageError",
    "PermanentError",
    "ProviderAdapter",
    "ProviderError",
    "RateLimitedError",
    "SendOutcome",
    "SendResult",
    "TransientError",
]
