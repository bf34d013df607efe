"""Provider sandboxes: local servers speaking the real SendGrid, Twilio, FCM, APNs, webhook and SMTP wire
formats, for development and tests (a plain asyncio package, no Django). They enforce contract rates,
inject latency and errors, record accepted requests and expose a ``/_sandbox/`` control API; production
adapters run against them unchanged. Running them (``python -m provider_sandbox``), the client and the
platform's settings: README.md in this directory."""

from provider_sandbox.config import (
    DEFAULT_PORTS,
    DEFAULT_SMTP_CONTROL_PORT,
    PROVIDERS,
    ConfigError,
    ErrorRates,
    LatencyConfig,
    ProviderConfig,
    SandboxConfig,
)

__all__ = [
    "DEFAULT_PORTS",
    "DEFAULT_SMTP_CONTROL_PORT",
    "PROVIDERS",
    "ConfigError",
    "ErrorRates",
    "LatencyConfig",
    "ProviderConfig",
    "SandboxConfig",
]
