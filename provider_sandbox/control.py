"""The ``/_sandbox/`` control API served next to every provider endpoint: health, stats, recorded
requests, configuration and reset (README.md, "Control API")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from provider_sandbox.config import ConfigError
from provider_sandbox.messages import Request, Response

if TYPE_CHECKING:
    from provider_sandbox.base import ProviderSandbox

CONTROL_PREFIX = "/_sandbox/"
MAX_LIMIT = 100_000


def _error(status: int, message: str) -> Response:
    return Response.json(status, {"error": message})


def _int_param(request: Request, name: str, default: int) -> int:
    value = request.query_value(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer") from None


def _body(request: Request) -> dict[str, Any]:
    if not request.body.strip():
        return {}
    data = orjson.loads(request.body)
    if not isinstance(data, dict):
        raise ConfigError("body must be a JSON object")
    return data


async def handle_control(sandbox: ProviderSandbox, request: Request) -> Response:
    action = request.path[len(CONTROL_PREFIX) :].strip("/")
    method = request.method.upper()
    try:
        if action == "health" and method == "GET":
            return Response.json(200, {"ok": True, "provider": sandbox.name, "port": sandbox.port})
        if action == "stats" and method == "GET":
            window = float(request.query_value("window") or 1.0)
            if window <= 0:
                raise ConfigError("window must be > 0")
            return Response.json(200, sandbox.stats(window))
        if action == "requests" and method == "GET":
            since = _int_param(request, "since", 0)
            limit = min(max(_int_param(request, "limit", 1000), 0), MAX_LIMIT)
            raw = request.query_value("raw") in ("1", "true", "yes")
            records = sandbox.recorder.since(since, limit, request.query_value("recipient"))
            return Response.json(
                200,
                {
                    "provider": sandbox.name,
                    "since": since,
                    "next_since": records[-1].seq if records else since,
                    "last_seq": sandbox.recorder.seq,
                    "count": len(records),
                    "requests": [r.to_dict(include_raw=raw) for r in records],
                },
            )
        if action == "config" and method == "GET":
            return Response.json(200, sandbox.config.to_dict() | {"seed": sandbox.seed})
        if action == "config" and method == "POST":
            sandbox.apply_config(_body(request))
            return Response.json(200, sandbox.config.to_dict() | {"seed": sandbox.seed})
        if action == "reset" and method == "POST":
            sandbox.reset(restore_config=bool(_body(request).get("config")))
            return Response.json(200, {"ok": True, "provider": sandbox.name})
    except (ConfigError, ValueError, TypeError) as exc:
        return _error(400, str(exc))
    if action in ("health", "stats", "requests", "config", "reset"):
        return _error(405, f"method {method} not allowed on /_sandbox/{action}")
    return _error(404, f"unknown control endpoint /_sandbox/{action}")
