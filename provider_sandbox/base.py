"""The request pipeline shared by every provider sandbox.

``handle()`` runs, for each non-control request::

    parse (route, auth, body)  ->  contract rate limit  ->  latency  ->  validate
        ->  triggers / random faults  ->  accept + record

Subclasses implement ``parse``, ``validate``, ``accept``, ``rate_limited`` and ``fault_response``
with the provider's real wire format.  Rejections raise :class:`Reject` carrying the exact response.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from provider_sandbox.config import ProviderConfig
from provider_sandbox.control import CONTROL_PREFIX, handle_control
from provider_sandbox.faults import THROTTLED, Fault, FaultInjector
from provider_sandbox.listener import HttpListener
from provider_sandbox.messages import Request, Response
from provider_sandbox.ratelimit import SlidingWindowLimiter
from provider_sandbox.recorder import Counters, Recorder


@dataclass(slots=True)
class Call:
    """A parsed provider request travelling through the pipeline."""

    request: Request
    t_mono: float
    t_wall: float
    recipients: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    data: Any = None  # provider specific parsed body
    extra: dict[str, Any] = field(default_factory=dict)


class Reject(Exception):
    """Abort the pipeline and answer ``response``; counted under ``errors[kind]``."""

    def __init__(self, response: Response, kind: str) -> None:
        super().__init__(kind)
        self.response = response
        self.kind = kind


def retry_after_seconds(seconds: float) -> str:
    """``Retry-After`` is whole seconds: round up, at least 1."""
    whole = int(seconds)
    return str(max(1, whole if whole == seconds else whole + 1))


class ProviderSandbox:
    """Base class: state (config, limiter, recorder, counters) plus the pipeline."""

    name: ClassVar[str] = "provider"
    http2: ClassVar[bool] = False  # listener also accepts HTTP/2 prior knowledge

    def __init__(self, config: ProviderConfig, *, max_records: int = 2_000_000, seed: int | None = None) -> None:
        self.config = config
        self.initial_config = config.copy()
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - simulated faults, not secrets
        self.limiter = SlidingWindowLimiter(config.rate, config.burst)
        self.recorder = Recorder(self.name, max_records)
        self.faults = FaultInjector(self.rng)
        self.counters = Counters()
        self.started_mono = time.monotonic()
        self.port: int | None = None
        self._listener: HttpListener | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str) -> dict[str, int]:
        """Start listening; returns ``{name: bound_port}`` (port 0 picks a free port)."""
        self._listener = HttpListener(self.handle, http2=self.http2, name=self.name)
        self.port = await self._listener.start(host, self.config.port)
        return {self.name: self.port}

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None

    # ------------------------------------------------------------------ pipeline
    async def handle(self, request: Request) -> Response:
        if request.path.startswith(CONTROL_PREFIX):
            return await handle_control(self, request)
        t_mono, t_wall = time.monotonic(), time.time()
        self.counters.received += 1
        call: Call | None = None
        try:
            call = self.parse(request, t_mono, t_wall)
            retry_after = self.limiter.try_acquire(t_mono)
            if retry_after is not None:
                self.counters.rate_limited += 1
                return self.finish(self.rate_limited(call, retry_after), call)
            await self.delay(call.recipients)
            self.validate(call)
            fault = self.faults.decide(call.recipients, self.config.errors)
            if fault is not None:
                self.counters.errors[fault.kind] += 1
                if fault.kind == THROTTLED:
                    return self.finish(self.rate_limited(call, 1.0), call)
                return self.finish(self.fault_response(fault, call), call)
            response, provider_id = self.accept(call)
            self.record(call, provider_id)
            return self.finish(response, call)
        except Reject as rejection:
            self.counters.errors[rejection.kind] += 1
            return self.finish(rejection.response, call)

    async def delay(self, recipients: list[str]) -> None:
        seconds = self.config.latency.sample(self.rng) + self.faults.extra_latency(recipients)
        if seconds > 0:
            await asyncio.sleep(seconds)

    def record(self, call: Call, provider_id: str | None, meta: dict[str, Any] | None = None) -> None:
        self.recorder.add(
            t_mono=call.t_mono,
            t_wall=call.t_wall,
            recipients=call.recipients,
            keys=call.keys,
            provider_id=provider_id,
            method=call.request.method,
            path=call.request.target,
            content_type=call.request.content_type,
            raw=call.request.body,
            meta=meta or call.extra.get("meta"),
        )
        self.counters.accepted += 1

    # ------------------------------------------------------------------ provider hooks
    def parse(self, request: Request, t_mono: float, t_wall: float) -> Call:
        raise NotImplementedError

    def validate(self, call: Call) -> None:
        """Raise :class:`Reject` for a semantically invalid request (after rate limit and latency)."""

    def accept(self, call: Call) -> tuple[Response, str | None]:
        raise NotImplementedError

    def rate_limited(self, call: Call | None, retry_after: float) -> Response:
        raise NotImplementedError

    def fault_response(self, fault: Fault, call: Call) -> Response:
        raise NotImplementedError

    def finish(self, response: Response, call: Call | None) -> Response:
        """Last chance to decorate every non-control response (e.g. rate-limit headers)."""
        return response

    def extra_stats(self) -> dict[str, Any]:
        return {}

    def on_reset(self) -> None:
        """Provider specific state to clear on ``POST /_sandbox/reset``."""

    # ------------------------------------------------------------------ control
    def apply_config(self, data: dict[str, Any]) -> None:
        data = dict(data)
        if "seed" in data:
            seed = data.pop("seed")
            self.seed = None if seed is None else int(seed)
            self.rng.seed(self.seed)
        self.config.update(data)
        if {"rate", "burst"} & set(data):
            self.limiter.configure(self.config.rate, self.config.burst)

    def reset(self, *, restore_config: bool = False) -> None:
        if restore_config:
            port = self.config.port
            self.config = self.initial_config.copy()
            self.config.port = port
            self.limiter.configure(self.config.rate, self.config.burst)
            self.rng.seed(self.seed)
        self.recorder.reset()
        self.counters = Counters()
        self.limiter.reset()
        self.faults.reset()
        self.started_mono = time.monotonic()
        self.on_reset()

    def stats(self, window: float = 1.0) -> dict[str, Any]:
        return {
            "provider": self.name,
            "port": self.port,
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            **self.counters.to_dict(),
            **self.recorder.stats(window),
            "limiter": self.limiter.to_dict(),
            **self.extra_stats(),
        }
