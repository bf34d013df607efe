"""The adapter base classes: one provider behind one interface, ``await adapter.send(message) -> SendResult``.

``send`` never raises for provider or network trouble: a ``ProviderError`` (raised by adapters, chained
with ``from``) or an httpx transport error becomes a :class:`SendResult`; anything else (a bug) propagates.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

import httpx

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.errors import TransientError, result_from_exception
from notifications.providers.results import SendOutcome, SendResult

log = logging.getLogger("notifications.providers")

T = TypeVar("T")

Clock = Callable[[], float]


class ProviderAdapter(ABC):
    """One provider behind one interface (anymail's template method).

    :meth:`send` is the template: it calls the adapter's :meth:`_send` (build the payload, post it,
    classify the answer) and translates every provider and network exception into a result. Adapters
    are created and used inside one event loop (they own pooled clients bound to it); close them with
    :meth:`aclose` or ``async with``.
    """

    name: str = "provider"
    channel: ClassVar[str] = ""
    #: How many sends this adapter can really have on the wire at once; None: as many as the caller
    #: starts (its pool is sized to the worker's concurrency). A send started beyond it would wait
    #: inside the adapter -- inside its send deadline -- so the worker admits at most this many
    #: (`ChannelWorker._deliver`), and the deadline only ever covers a request on the wire.
    max_in_flight: int | None = None

    def __init__(self, *, name: str | None = None, clock: Clock = time.time, deadline: float | None = None) -> None:
        if name:
            self.name = name
        self.clock = clock  # wall clock, injectable for tests (rate-limit resets, JWT iat/exp)
        # Upper bound on one send() however many requests, waits and retries it makes inside, so the
        # worker can size its dedup lease (httpx timeouts are per phase, not per request).
        self.deadline = deadline

    async def send(self, message: ChannelMessage) -> SendResult:
        """Send one channel message; never raises for provider or network errors."""
        try:
            result = await self._send_within_deadline(message)
        except Exception as exc:
            translated = result_from_exception(self.name, exc)
            if translated is None:
                raise
            result = translated
            log.debug("provider send failed", extra={"provider": self.name, "error": repr(exc)}, exc_info=exc)
        self._log_result(message, result)
        return result

    async def _send_within_deadline(self, message: ChannelMessage) -> SendResult:
        if self.deadline is None:
            return await self._send(message)
        scope = asyncio.timeout(self.deadline)
        try:
            async with scope:
                return await self._send(message)
        except TimeoutError:
            if not scope.expired():
                raise
            return SendResult(
                SendOutcome.TRANSIENT,
                self.name,
                error_code="deadline",
                message=f"no provider answer within the {self.deadline:g}s send deadline",
            )

    def backpressure_scope(self, message: ChannelMessage) -> str:
        """What a rate limit answered to ``message`` holds back: "" the whole provider (its bucket),
        else a part of it (a webhook endpoint) that the worker pauses on its own."""
        return ""

    def requests_for(self, message: ChannelMessage) -> int:
        """How many provider requests one send of ``message`` makes at once (counted in `max_in_flight`)."""
        return 1

    async def send_many(self, messages: Sequence[ChannelMessage]) -> list[SendResult]:
        """Send several messages concurrently (the connection pool bounds what is really in flight)."""
        return list(await asyncio.gather(*(self.send(message) for message in messages)))

    @abstractmethod
    async def _send(self, message: ChannelMessage) -> SendResult:
        """Build the provider payload, post it and classify the response (may raise ProviderError)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook: adapters without resources need nothing
        """Release pooled connections and threads."""

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _log_result(self, message: ChannelMessage, result: SendResult) -> None:
        if result.ok:
            return
        # Config errors need a human; the rest is routine under load (the worker logs each outcome).
        level = logging.WARNING if result.outcome is SendOutcome.CONFIG_ERROR else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "provider send %s",
                result.outcome,
                extra={
                    "provider": self.name,
                    "notification_id": message.get("id"),
                    "outcome": str(result.outcome),
                    "status_code": result.status_code,
                    "error_code": result.error_code,
                    "retry_after": result.retry_after,
                },
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} channel={self.channel!r}>"


class HttpProviderAdapter(ProviderAdapter):
    """An adapter that posts one HTTP request per send over its own pooled ``httpx.AsyncClient``.

    Subclasses implement :meth:`build_request` and :meth:`parse_response`; the base posts.
    """

    def __init__(self, *, client: httpx.AsyncClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = client

    async def _send(self, message: ChannelMessage) -> SendResult:
        request = self.build_request(message)
        response = await self.client.send(request)
        return self.parse_response(response, message)

    def build_request(self, message: ChannelMessage) -> httpx.Request:
        raise NotImplementedError

    def parse_response(self, response: httpx.Response, message: ChannelMessage) -> SendResult:
        raise NotImplementedError

    async def aclose(self) -> None:
        await self.client.aclose()


class ThreadedProviderAdapter(ProviderAdapter):
    """An adapter over a synchronous library, run in a bounded thread pool.

    Each worker thread keeps its own long-lived connection object (:meth:`open_connection`), created
    on first use and closed by :meth:`aclose`, so a send costs no handshake.
    """

    def __init__(self, *, max_workers: int, queue_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_workers = max(1, int(max_workers))
        self.queue_timeout = queue_timeout
        self._executor = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix=f"provider-{self.name}")
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()

    async def run_in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking send in the pool.

        No asyncio deadline here: cancelling the await would not stop a send already in a thread (it
        could succeed after being reported failed). Instead a send that waited more than
        ``queue_timeout`` for a free thread is skipped before it starts (``transient``), and a started
        one is bounded by the library's own socket timeouts.
        """
        enqueued = time.monotonic()

        def call() -> T:
            waited = time.monotonic() - enqueued
            if waited > self.queue_timeout:
                raise TransientError(
                    f"waited {waited:.1f}s for a free {self.name} thread; not sent",
                    provider=self.name,
                    error_code="pool_timeout",
                )
            return fn(*args)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, call)

    def thread_connection(self) -> Any:
        """This thread's connection, opened on first use (runs in a pool thread)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self.open_connection()
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def drop_thread_connection(self) -> None:
        """Forget (and close) this thread's connection, e.g. after the server hung up."""
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._connections_lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            self._close_quietly(connection)

    def open_connection(self) -> Any:
        raise NotImplementedError

    def close_connection(self, connection: Any) -> None:
        raise NotImplementedError

    def _close_quietly(self, connection: Any) -> None:
        try:
            self.close_connection(connection)
        except Exception:  # closing a dead connection must not hide the send's own outcome
            log.debug("closing %s connection failed", self.name, exc_info=True)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True)
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            await asyncio.to_thread(self._close_quietly, connection)
