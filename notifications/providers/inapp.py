"""The in-app "provider": writes messages to the user's inbox in bulk, idempotently on the notification id."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    close_old_connections,
    connections,
)

from notifications.dispatch.messages import ChannelMessage
from notifications.providers.base import ProviderAdapter
from notifications.providers.errors import InvalidMessageError
from notifications.providers.results import SendOutcome, SendResult, truncate

#: Rows per INSERT: one round trip each; 500 keeps the statement small and the transaction short.
DEFAULT_BATCH_SIZE = 500
#: How long a single ``send`` waits for company before its batch is written: 5 ms adds little
#: latency and, under load, turns hundreds of concurrent sends into one INSERT.
DEFAULT_BATCH_WINDOW = 0.005
DEFAULT_WRITER_THREADS = 2

InboxWriter = Callable[[Sequence[Mapping[str, Any]]], int]


def _default_writer() -> InboxWriter:
    from preferences.services import inbox_write_many  # the app registry must be ready first

    return inbox_write_many


def inbox_row(message: ChannelMessage) -> dict[str, Any]:
    """The ``inbox_write_many`` row of a channel message; InvalidMessageError when it has no user."""
    to = message.get("to") or {}
    user_id = to.get("user_id", message.get("user_id"))
    try:
        user_id = int(user_id)
    except (TypeError, ValueError):
        raise InvalidMessageError(
            f"message {message.get('id')!r} has no user id", provider="inapp", error_code="invalid_message"
        ) from None
    if not message.get("id"):
        raise InvalidMessageError("message has no id", provider="inapp", error_code="invalid_message")
    content = message.get("content") or {}
    return {
        "user_id": user_id,
        "notification_id": message["id"],
        "type_key": message.get("type") or "",
        "category": message.get("category") or "",
        "title": content.get("title") or "",
        "body": content.get("body") or "",
        "data": content.get("data") or {},
        "created_at": _created_at(message.get("created_at")),
    }


def _created_at(value: Any) -> dt.datetime | None:
    """The envelope's creation time, or None (= now) when it is missing or unparsable."""
    if isinstance(value, dt.datetime):
        return value
    try:
        return dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


class InAppAdapter(ProviderAdapter):
    """Writes to the inbox with ``preferences.services.inbox_write_many`` in a small thread pool.

    :meth:`send_many` is the real entry point: one INSERT per ``batch_size`` rows, idempotent on the
    notification id (a redelivered message inserts nothing and still counts as ``sent``). :meth:`send`
    delegates to it through a coalescer: concurrent single sends within ``batch_window`` share a batch.
    A database that is down is ``transient`` for the whole batch; any other database error makes the
    batch fall back to one write per message, so one poison row fails alone (``permanent``).
    """

    name = "inapp"
    channel = "inapp"

    def __init__(
        self,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        batch_window: float = DEFAULT_BATCH_WINDOW,
        writer_threads: int = DEFAULT_WRITER_THREADS,
        writer: InboxWriter | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.batch_size = max(1, int(batch_size))
        self.batch_window = max(0.0, float(batch_window))
        self.writer_threads = max(1, int(writer_threads))
        self._writer = writer
        self._executor = ThreadPoolExecutor(max_workers=self.writer_threads, thread_name_prefix="provider-inapp")
        self._pending: list[tuple[ChannelMessage, asyncio.Future[SendResult]]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self.batches_written = 0  # INSERT batches issued (observability, tests)

    # ------------------------------------------------------------------------------------- bulk
    async def send_many(self, messages: Sequence[ChannelMessage]) -> list[SendResult]:
        results: list[SendResult | None] = [None] * len(messages)
        rows: list[tuple[int, dict[str, Any]]] = []
        for index, message in enumerate(messages):
            try:
                rows.append((index, inbox_row(message)))
            except InvalidMessageError as exc:
                results[index] = exc.to_result()
        for chunk_start in range(0, len(rows), self.batch_size):
            chunk = rows[chunk_start : chunk_start + self.batch_size]
            for (index, _row), result in zip(chunk, await self._write_chunk([row for _, row in chunk]), strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    async def _write_chunk(self, rows: list[dict[str, Any]]) -> list[SendResult]:
        if len(rows) == 1:
            return [await self._write_one(rows[0])]
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._write, rows)
        except (OperationalError, InterfaceError, ProgrammingError) as exc:
            return [self._database_failure(exc) for _ in rows]
        except DatabaseError:
            return [await self._write_one(row) for row in rows]  # isolate the poison row
        return [self._sent(row) for row in rows]

    async def _write_one(self, row: dict[str, Any]) -> SendResult:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._write, [row])
        except DatabaseError as exc:
            return self._database_failure(exc)
        return self._sent(row)

    def _database_failure(self, exc: DatabaseError) -> SendResult:
        if isinstance(exc, OperationalError | InterfaceError):  # the database is down or restarting
            outcome, code = SendOutcome.TRANSIENT, "database_unavailable"
        elif isinstance(exc, ProgrammingError):  # e.g. a migration not applied: every row would fail
            outcome, code = SendOutcome.CONFIG_ERROR, "database_schema"
        else:  # DataError & co.: this row cannot be stored
            outcome, code = SendOutcome.PERMANENT, "database_rejected"
        return SendResult(outcome, self.name, error_code=code, message=truncate(str(exc)))

    def _sent(self, row: Mapping[str, Any]) -> SendResult:
        return SendResult(SendOutcome.SENT, self.name, provider_message_id=str(row["notification_id"]))

    def _write(self, rows: list[dict[str, Any]]) -> int:
        """Runs in a writer thread (Django connections are per thread)."""
        close_old_connections()  # drop a connection that died or outlived CONN_MAX_AGE
        writer = self._writer or _default_writer()
        try:
            written = writer(rows)
        except (OperationalError, InterfaceError):
            connections["default"].close()  # reconnect on the next batch
            raise
        self.batches_written += 1
        return written

    # ------------------------------------------------------------------------------------- single sends
    async def _send(self, message: ChannelMessage) -> SendResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SendResult] = loop.create_future()
        self._pending.append((message, future))
        if len(self._pending) >= self.batch_size:
            self._flush_now()
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(self.batch_window, self._flush_now)
        return await asyncio.shield(future)  # a cancelled caller must not cancel its batch-mates' write

    def _flush_now(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[ChannelMessage, asyncio.Future[SendResult]]]) -> None:
        try:
            results = await self.send_many([message for message, _ in batch])
        except BaseException as exc:  # a bug: hand it to every waiting caller, crash loudly there
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    # ------------------------------------------------------------------------------------- lifecycle
    async def aclose(self) -> None:
        self._flush_now()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        barrier = threading.Barrier(self.writer_threads, timeout=5.0)

        def close_thread_connections() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()  # one call per writer thread: each closes its own connections
            connections.close_all()

        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._executor, close_thread_connections) for _ in range(self.writer_threads))
        )
        await asyncio.to_thread(self._executor.shutdown, True)
