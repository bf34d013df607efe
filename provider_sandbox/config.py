"""Configuration objects for the provider sandboxes.

Everything here is plain data (dataclasses) so it can be built from CLI flags, from a JSON file, or
changed at runtime through ``POST /_sandbox/config``.  See ``README.md`` next to this module for the
meaning of each knob.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

PROVIDERS: tuple[str, ...] = ("sendgrid", "twilio", "fcm", "apns", "webhook", "smtp")

#: Below Linux's ephemeral range (32768-60999), so a test's port-0 listener or an outgoing
#: connection can never be holding one of them when `make dev` starts.
DEFAULT_PORTS: dict[str, int] = {
    "sendgrid": 18101,
    "twilio": 18102,
    "fcm": 18103,
    "apns": 18104,
    "webhook": 18105,
    "smtp": 18125,
}
DEFAULT_SMTP_CONTROL_PORT = 18126
DEFAULT_MAX_RECORDS = 2_000_000

#: Options shown as "***" by the control API.
_SECRET_OPTIONS = ("secret", "endpoint_secrets")

#: Provider specific options and their defaults (``options`` in :class:`ProviderConfig`).
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "sendgrid": {
        "api_keys": [],  # empty: any non-empty bearer key is accepted
        "idempotency_fields": ["notification_id", "idempotency_key", "message_id", "anymail_id"],
    },
    "twilio": {
        "accounts": {},  # {AccountSid: AuthToken}; empty: any credentials whose user matches the path
        "body_key_pattern": r"(?:notification[_-]?id|nid|idempotency[_-]?key)[=:]\s*([A-Za-z0-9._:-]+)",
    },
    "fcm": {
        "project": None,  # when set, other projects get 403 SENDER_ID_MISMATCH
        "public_key_pem": None,  # PEM text/path of the service account key: verifies RS256 assertions
        "static_tokens": [],  # bearer tokens accepted without a /token exchange
        "token_ttl": 3600,
    },
    "apns": {
        "team_id": None,
        "key_id": None,
        "public_key_pem": None,  # PEM text/path of the .p8 public key: verifies ES256 provider tokens
        "topics": [],  # empty: any apns-topic
        "token_max_age": 3600,
    },
    "webhook": {
        "secret": None,  # "whsec_..." enables Standard Webhooks signature verification
        # {path prefix: "whsec_..." or a list of them}: that endpoint's own secret(s), over "secret";
        # the longest matching prefix wins, and a request passes when one of them verifies
        "endpoint_secrets": {},
        "busy_retry_after": True,  # false: busy-S endpoints answer 429 without a Retry-After
        "tolerance_s": 300,
        "success_status": 204,
    },
    "smtp": {
        "bounce_pattern": r"(?i)^[^@]*bounce[^@]*@",
        "rules": [],  # [{"pattern": regex, "code": 552, "message": "5.2.2 Mailbox full"}], checked at RCPT
        "auth": None,  # None: AUTH not offered; "any": any login accepted; {"user": "password"}
        "hostname": "sandbox.smtp.local",
    },
}


class ConfigError(ValueError):
    """Raised for an invalid configuration value (answered as HTTP 400 by the control API)."""


def _number(value: Any, name: str, *, minimum: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(number) or number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
    return number


@dataclass
class LatencyConfig:
    """Artificial response latency: ``none``, ``fixed`` ms, ``uniform`` min..max or ``normal`` mean/stddev."""

    kind: str = "none"
    ms: float = 0.0
    min_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    stddev_ms: float = 0.0

    KINDS = ("none", "fixed", "uniform", "normal")

    def sample(self, rng: random.Random) -> float:
        """One latency draw, in seconds (never negative)."""
        if self.kind == "fixed":
            value = self.ms
        elif self.kind == "uniform":
            value = rng.uniform(self.min_ms, self.max_ms)
        elif self.kind == "normal":
            value = rng.gauss(self.mean_ms, self.stddev_ms)
        else:
            return 0.0
        return max(0.0, value) / 1000.0

    @classmethod
    def parse(cls, spec: Any) -> LatencyConfig:
        """Accept ``10``, ``"10"``, ``"fixed:10"``, ``"uniform:5:20"``, ``"5..20"``, ``"normal:50:10"`` or a dict."""
        if spec is None:
            return cls()
        if isinstance(spec, LatencyConfig):
            return spec
        if isinstance(spec, dict):
            return cls._from_dict(spec)
        if isinstance(spec, int | float):
            return cls(kind="fixed", ms=_number(spec, "latency")) if spec else cls()
        text = str(spec).strip().lower()
        if text in ("", "none", "0"):
            return cls()
        if ".." in text and ":" not in text:
            low, high = text.split("..", 1)
            return cls._from_dict({"kind": "uniform", "min_ms": low, "max_ms": high})
        parts = text.split(":")
        if len(parts) == 1:
            return cls(kind="fixed", ms=_number(parts[0], "latency"))
        kind, args = parts[0], parts[1:]
        if kind == "fixed" and len(args) == 1:
            return cls._from_dict({"kind": "fixed", "ms": args[0]})
        if kind == "uniform" and len(args) == 2:
            return cls._from_dict({"kind": "uniform", "min_ms": args[0], "max_ms": args[1]})
        if kind == "normal" and len(args) == 2:
            return cls._from_dict({"kind": "normal", "mean_ms": args[0], "stddev_ms": args[1]})
        raise ConfigError(f"bad latency spec {spec!r}: use MS, fixed:MS, uniform:MIN:MAX or normal:MEAN:STDDEV")

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> LatencyConfig:
        kind = str(data.get("kind", "fixed" if "ms" in data else "none"))
        if kind not in cls.KINDS:
            raise ConfigError(f"latency kind must be one of {cls.KINDS}, got {kind!r}")
        unknown = set(data) - {"kind", "ms", "min_ms", "max_ms", "mean_ms", "stddev_ms"}
        if unknown:
            raise ConfigError(f"unknown latency keys: {sorted(unknown)}")
        cfg = cls(kind=kind, **{k: _number(v, f"latency.{k}") for k, v in data.items() if k != "kind"})
        if cfg.kind == "uniform" and cfg.max_ms < cfg.min_ms:
            raise ConfigError("latency.max_ms must be >= latency.min_ms")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "fixed":
            return {"kind": "fixed", "ms": self.ms}
        if self.kind == "uniform":
            return {"kind": "uniform", "min_ms": self.min_ms, "max_ms": self.max_ms}
        if self.kind == "normal":
            return {"kind": "normal", "mean_ms": self.mean_ms, "stddev_ms": self.stddev_ms}
        return {"kind": "none"}


@dataclass
class ErrorRates:
    """Probabilities (0..1) of injecting an error into a request that passed the rate limit."""

    transient: float = 0.0
    bad_request: float = 0.0
    invalid_token: float = 0.0

    def update(self, data: dict[str, Any]) -> None:
        unknown = set(data) - {"transient", "bad_request", "invalid_token"}
        if unknown:
            raise ConfigError(f"unknown error-rate keys: {sorted(unknown)}")
        values = {k: _number(v, f"errors.{k}") for k, v in data.items()}
        merged = {**self.to_dict(), **values}
        if any(v > 1 for v in merged.values()) or sum(merged.values()) > 1 + 1e-9:
            raise ConfigError("error rates are probabilities: each <= 1 and their sum <= 1")
        for key, value in values.items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, float]:
        return {"transient": self.transient, "bad_request": self.bad_request, "invalid_token": self.invalid_token}


@dataclass
class ProviderConfig:
    """Runtime behaviour of one provider sandbox."""

    name: str
    port: int
    rate: float | None = None  # contract rate in requests/second; None = unlimited
    burst: int | None = None  # window capacity; None = ceil(rate) (a plain 1-second sliding window)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    errors: ErrorRates = field(default_factory=ErrorRates)
    options: dict[str, Any] = field(default_factory=dict)

    UPDATABLE = ("rate", "burst", "latency", "latency_ms", "errors", "options")

    def __post_init__(self) -> None:
        self.options = {**DEFAULT_OPTIONS.get(self.name, {}), **self.options}

    def update(self, data: dict[str, Any]) -> None:
        """Apply a partial update (the body of ``POST /_sandbox/config``); all-or-nothing."""
        unknown = set(data) - set(self.UPDATABLE)
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}; allowed: {list(self.UPDATABLE)}")
        rate, burst = self.rate, self.burst
        if "rate" in data:
            rate = None if data["rate"] in (None, 0, "0", "") else _number(data["rate"], "rate", minimum=1e-9)
        if "burst" in data:
            burst = None if data["burst"] in (None, 0, "") else int(_number(data["burst"], "burst", minimum=1))
        latency = self.latency
        if "latency" in data:
            latency = LatencyConfig.parse(data["latency"])
        if "latency_ms" in data:
            latency = LatencyConfig.parse(_number(data["latency_ms"], "latency_ms"))
        errors = ErrorRates(**self.errors.to_dict())
        if "errors" in data:
            if not isinstance(data["errors"], dict):
                raise ConfigError("errors must be an object")
            errors.update(data["errors"])
        options = dict(self.options)
        if "options" in data:
            if not isinstance(data["options"], dict):
                raise ConfigError("options must be an object")
            unknown_opts = set(data["options"]) - set(DEFAULT_OPTIONS.get(self.name, {}))
            if unknown_opts:
                raise ConfigError(f"unknown {self.name} options: {sorted(unknown_opts)}")
            options.update(data["options"])
        self.rate, self.burst, self.latency, self.errors, self.options = rate, burst, latency, errors, options

    def copy(self) -> ProviderConfig:
        return ProviderConfig(
            name=self.name,
            port=self.port,
            rate=self.rate,
            burst=self.burst,
            latency=LatencyConfig(**vars(self.latency)),
            errors=ErrorRates(**self.errors.to_dict()),
            options=dict(self.options),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "port": self.port,
            "rate": self.rate,
            "burst": self.burst,
            "latency": self.latency.to_dict(),
            "errors": self.errors.to_dict(),
            "options": {
                k: ("***" if k in ("secret", "endpoint_secrets") and v else v) for k, v in self.options.items()
            },
        }


@dataclass
class SandboxConfig:
    """Configuration of a whole sandbox process (one asyncio loop hosting several providers)."""

    host: str = "127.0.0.1"
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    smtp_control_port: int = DEFAULT_SMTP_CONTROL_PORT
    max_records: int = DEFAULT_MAX_RECORDS
    seed: int | None = None

    @classmethod
    def default(cls, only: list[str] | tuple[str, ...] | None = None, **kwargs: Any) -> SandboxConfig:
        """All providers (or only ``only``) on their default ports, unlimited, no latency or errors."""
        names = list(only) if only else list(PROVIDERS)
        unknown = set(names) - set(PROVIDERS)
        if unknown:
            raise ConfigError(f"unknown providers: {sorted(unknown)}; known: {list(PROVIDERS)}")
        providers = {name: ProviderConfig(name=name, port=DEFAULT_PORTS[name]) for name in names}
        return cls(providers=providers, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "smtp_control_port": self.smtp_control_port,
            "max_records": self.max_records,
            "seed": self.seed,
            "providers": {name: cfg.to_dict() for name, cfg in self.providers.items()},
        }
