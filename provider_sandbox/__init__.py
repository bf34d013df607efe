"""Provider sandboxes: local servers speaking the real SendGrid, Twilio, FCM, APNs, webhook and SMTP wire formats.

A plain asyncio package (no Django).  Production adapters are pointed at ``127.0.0.1`` ports and run
unchanged; the sandboxes enforce contract rates, inject latency and errors (randomly or through
recipient markers such as ``invalid``, ``unregistered``, ``fail5xx-N``), record accepted requests and
expose a ``/_sandbox/`` control API.  See ``README.md`` in this directory.

Entry points:

* ``python -m provider_sandbox --only sendgrid,twilio --sendgrid-rate 500 --sendgrid-port 0``
* ``provider_sandbox.server.serve(config)`` / ``SandboxServer`` / ``BackgroundSandbox``
* ``provider_sandbox.client.SandboxClient(base_url)`` (httpx, sync) for tests and benchmarks
* ``provider_sandbox.process.SandboxProcess`` to spawn the CLI as a subprocess
* ``provider_sandbox.platform_env.provider_env(urls)``: the platform's provider settings for a sandbox
  (``platform/sandbox.env``); ``python -m provider_sandbox.credentials`` writes the key files it names
"""

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
