"""The dispatcher: ``notif.events`` in, one ready-to-send message per wanted channel out (``run_dispatcher``).

A batch is handled as a whole (one MGET, one query, one caps pipeline, one log insert) and committed only
once its messages are acknowledged and its decisions stored: docs/architecture.md, "Dispatcher".
"""

import logging
import re
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis
from confluent_kafka import Message, Producer
from django.conf import settings
from django.utils import timezone
from prometheus_client import Counter

from notifications.bus.config import MAX_MESSAGE_BYTES, producer_config
from notifications.bus.dead_letters import dead_letter_headers
from notifications.bus.producing import AckedProducer
from notifications.bus.runner import ConsumerRunner
from notifications.bus.topics import channel_topic, delivery_topic, events_topic, topic_name
from notifications.channels import Channel
from notifications.delivery_log import DispatchRow, log_day, record_dispatch_outcomes
from notifications.dispatch.catalog import TypeCatalog, TypeEntry
from notifications.dispatch.db_thread import DatabaseThread
from notifications.dispatch.killswitch import KillSwitchBoard
from notifications.dispatch.messages import (
    ChannelMessage,
    Header,
    channel_message,
    encode,
    idempotency_key,
    split_by_platform,
)
from notifications.dispatch.release import ReleaseScreen
from notifications.dispatch.scheduling import Deferred, release_due_messages, schedule_messages
from notifications.dispatch.screening import (
    FREQUENCY_CAP,
    QuietHours,
    Screened,
    candidate_channels,
    frequency_cap_refusals,
    kill_switch_holds,
    screen_channel,
)
from notifications.dispatch.templating import FieldsRenderer, RenderError, mentions
from notifications.models import MANDATORY_CATEGORIES, DeliveryStatus, Urgency
from notifications.priority import Lane, PriorityClass, classify, lane_for
from notifications.table_maintenance import MaintenanceLoop
from preferences.cache import preferences_get_many
from preferences.recipient_ids import resolve_recipients
from preferences.selectors import ContactPoints, contact_points_for_users
from preferences.state import PreferenceState
from preferences.unsubscribe import unsubscribe_url_maker

log = logging.getLogger(__name__)

EVENTS = Counter("dispatcher_events_total", "Events handled by the dispatcher", ["outcome"])
MESSAGES = Counter("dispatcher_messages_total", "Per-channel decisions", ["channel", "status", "reason"])

#: How often due (quiet-hours) messages are moved to the outbox.
RELEASE_INTERVAL = 1.0


class InvalidEvent(Exception):
    """The event cannot be dispatched (malformed, unknown type); it goes to the events DLQ."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


#: The canonical text form of a UUID, which ``uuid.UUID`` always accepts; other forms are checked by it.
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_event(raw: bytes | None) -> dict[str, Any]:
    try:
        event = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("invalid_json", f"not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise InvalidEvent("invalid_event", "envelope is not an object")
    if event.get("v") != 1:
        raise InvalidEvent("unsupported_version", f"envelope version {event.get('v')!r} is not 1")
    for field in ("id", "type", "recipient"):
        if not event.get(field):
            raise InvalidEvent("invalid_event", f"missing field '{field}'")
    try:
        event_id = str(event["id"])
        if _CANONICAL_UUID.fullmatch(event_id) is None:  # the usual form needs no UUID object
            uuid.UUID(event_id)
    except (ValueError, TypeError) as exc:
        raise InvalidEvent("invalid_event", f"bad id: {exc}") from exc
    recipient = event["recipient"]
    if type(recipient) is not str:  # an external id; an int from an envelope of before external ids
        if type(recipient) is not int:
            raise InvalidEvent("invalid_event", f"bad recipient: {recipient!r}")
        event["recipient"] = str(recipient)
    if not isinstance(event.get("data", {}), dict):
        raise InvalidEvent("invalid_event", "'data' is not an object")
    return event


@dataclass(slots=True)
class _Candidate(Screened):
    event: dict[str, Any]
    entry: TypeEntry
    contact: ContactPoints
    mode: str
    urgent: bool  # for quiet hours: the type's urgency
    switch_urgent: bool  # for kill switches: the urgent class (`screening.kill_switch_urgent`)


def dispatcher_producer() -> Producer:
    """The dispatcher's producer. It needs delivery reports only for failures: ``flush()`` says when
    everything else is acknowledged, and a Python callback per success costs a few µs a message."""
    return Producer(producer_config(**{"delivery.report.only.error": True}))


class _BatchScratch:
    """Values computed once per batch instead of once per message."""

    def __init__(self, now: datetime) -> None:
        self.created_at = now.isoformat()
        self.language_code = settings.LANGUAGE_CODE
        self._unsubscribe: dict[tuple[int, str], str] = {}
        self._make_link = unsubscribe_url_maker()
        self._plans: dict[tuple[int, str, str], _Plan] = {}
        self._push_data: dict[int, dict[str, str]] = {}
        self._topics: dict[tuple[str, Lane | None], str] = {}

    def push_data(self, data: dict[str, Any]) -> dict[str, str]:
        """``_stringly(data)`` once per event (its push and in-app messages share it; the batch holds
        every event, so ids are not reused meanwhile). Callers copy it into their own dict."""
        strings = self._push_data.get(id(data))
        if strings is None:
            strings = self._push_data[id(data)] = _stringly(data)
        return strings

    def topic(self, channel: str, lane: Lane | None) -> str:
        """The channel's lane (``delivery_topic``), or its kill-switch parking topic for ``None``;
        resolved once per batch."""
        name = self._topics.get((channel, lane))
        if name is None:
            name = channel_topic(channel, "delayed") if lane is None else delivery_topic(channel, lane)
            self._topics[channel, lane] = name
        return name

    def unsubscribe_url(self, user_id: int, category: str) -> str:
        """One signed link per (user, category) and batch, shared by the user's channels."""
        url = self._unsubscribe.get((user_id, category))
        if url is None:
            url = self._unsubscribe[user_id, category] = self._make_link(user_id, category)
        return url

    def plan(self, entry: TypeEntry, channel: str, locale: str) -> "_Plan":
        """What every message of this type, channel and locale shares. Keyed by the entry object:
        the catalog may be refreshed during a batch, and each event keeps the entry it was read with
        (the batch holds a reference to every entry, so ids are not reused meanwhile)."""
        key = (id(entry), channel, locale)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(entry, channel, locale)
        return plan


class _Plan:
    """The per-(type, channel, locale) part of building a message: the template (by the locale
    fallback chain), its renderer, whether the message carries an unsubscribe link, its priority class."""

    __slots__ = ("category", "error", "key", "link", "mandatory", "priority", "renderer", "urgency")

    def __init__(self, entry: TypeEntry, channel: str, locale: str) -> None:
        template = entry.template_for(channel, locale)
        self.key, self.category, self.urgency = entry.key, entry.category, entry.urgency
        self.error = (
            f"no {channel} template for type '{entry.key}'" if template is None and channel != Channel.WEBHOOK else None
        )
        self.mandatory = entry.category in MANDATORY_CATEGORIES
        self.link = not self.mandatory and (
            channel == Channel.EMAIL or (template is not None and mentions(template, channel, "unsubscribe_url"))
        )
        self.renderer = FieldsRenderer(template, channel) if template is not None else None
        self.priority = classify(category=entry.category, urgency=entry.urgency)


class Dispatcher:
    def __init__(
        self,
        *,
        producer: Producer,
        redis_client: redis.Redis,
        catalog: TypeCatalog | None = None,
        switches: KillSwitchBoard | None = None,
        clock: Callable[[], datetime] = timezone.now,
    ) -> None:
        self.producer = producer
        self.redis = redis_client
        self.catalog = catalog or TypeCatalog()
        self.switches = switches or KillSwitchBoard()
        self.clock = clock
        self._acked = AckedProducer(producer, "dispatcher")
        self._last_release = float("-inf")
        self._release_screen = ReleaseScreen(redis_client=redis_client, catalog=self.catalog, switches=self.switches)
        self._maintenance = MaintenanceLoop()
        self.writer = DatabaseThread("dispatcher-writer")
        self.reader = DatabaseThread("dispatcher-reader")

    def close(self) -> None:
        """Release the writer and reader threads and their database connections (the runner calls
        this on stop)."""
        self.writer.close()
        self.reader.close()

    # -- the batch ---------------------------------------------------------------------------
    def handle_batch(self, messages: list[Message]) -> Future:
        now = self.clock()
        logs: list[DispatchRow] = []
        deferred: list[Deferred] = []
        parsed: list[tuple[dict[str, Any], TypeEntry]] = []
        for message in messages:
            try:
                event = parse_event(message.value())
                entry = self.catalog.get(event["type"])
                if entry is None:
                    raise InvalidEvent("unknown_type", f"unknown or disabled notification type '{event['type']}'")
            except InvalidEvent as exc:
                self._event_to_dlq(message, exc)
                continue
            parsed.append((event, entry))

        # The producers' recipient ids become user ids here, the whole batch in one query.
        recipients = {event["recipient"] for event, _ in parsed}
        resolved = self.reader.submit(resolve_recipients, recipients).result() if recipients else {}
        if len(resolved) < len(recipients):
            parsed = self._drop_unknown_recipients(parsed, resolved)
        user_ids = set(resolved.values())
        # Contact points (PostgreSQL) are read on the reader thread while preferences come from Redis.
        contacts_read = self.reader.submit(contact_points_for_users, user_ids) if user_ids else None
        states = preferences_get_many(user_ids, redis_client=self.redis) if user_ids else {}
        contacts = contacts_read.result() if contacts_read is not None else {}

        suppressed = DeliveryStatus.SUPPRESSED
        modes: dict[str, str] = {}  # kill switches, read once per batch
        candidates: list[_Candidate] = []
        days: dict[str, str | None] = {}  # event id → its delivery-log day (the acceptance day)
        if parsed:
            EVENTS.labels("dispatched").inc(len(parsed))
        for event, entry in parsed:
            user_id, event_id, type_key = resolved[event["recipient"]], event["id"], event["type"]
            day = days[event_id] = log_day(event.get("accepted_at") or event.get("occurred_at"))
            contact = contacts.get(user_id)
            state = states.get(user_id) or PreferenceState(user_id=user_id, version=0, document={})
            # Most users have no preference document: the type's default channels.
            channels = candidate_channels(entry, state) if state.document else entry.default_channels
            category, urgent = entry.category, entry.urgency == Urgency.URGENT
            switch_urgent = classify(category=category, urgency=entry.urgency) is PriorityClass.URGENT
            for channel in channels:
                mode = modes.get(channel)
                if mode is None:
                    mode = modes[channel] = self.switches.channel_mode(channel)
                to, reason = screen_channel(
                    state,
                    contact,
                    category=category,
                    channel=channel,
                    default_channels=entry.default_channels,
                    mode=mode,
                    urgent=switch_urgent,
                )
                if to is None:
                    logs.append((event_id, user_id, channel, type_key, suppressed, reason, day))
                    continue
                candidates.append(
                    _Candidate(
                        user_id, channel, category, state, to, event, entry, contact, mode, urgent, switch_urgent
                    )
                )

        refused = frequency_cap_refusals(self.redis, candidates, now=now)
        quiet_hours = QuietHours(now)
        scratch = _BatchScratch(now)
        outgoing: list[tuple[str, str, ChannelMessage, bytes]] = []
        for index, candidate in enumerate(candidates):
            event, user_id, channel = candidate.event, candidate.user_id, candidate.channel
            event_id, type_key = event["id"], event["type"]
            day = days[event_id]
            if index in refused:
                logs.append((event_id, user_id, channel, type_key, suppressed, FREQUENCY_CAP, day))
                continue
            try:
                message = self._build_message(candidate, scratch, day)
                parts = split_by_platform(message)
                encoded = [_encode_within_limit(part) for part in parts]
            except RenderError as exc:
                self._render_failure_to_dlq(candidate, exc)
                logs.append((event_id, user_id, channel, type_key, DeliveryStatus.DLQ, f"render_error: {exc}", day))
                continue
            lane = lane_for(message["priority"])
            quiet_end = quiet_hours.end(candidate.state, urgent=candidate.urgent)
            if quiet_end is not None:
                deferred += [
                    Deferred(
                        quiet_end,
                        scratch.topic(channel, lane),
                        str(user_id),
                        dict(part),
                        {Header.IDEMPOTENCY_KEY: part["id"]},
                    )
                    for part in parts
                ]
                logs.append((event_id, user_id, channel, type_key, DeliveryStatus.SCHEDULED, "quiet_hours", day))
                continue
            park = kill_switch_holds(candidate.mode, urgent=candidate.switch_urgent)
            topic = scratch.topic(channel, None if park else lane)
            key = str(user_id)
            outgoing += [(topic, key, part, data) for part, data in zip(parts, encoded, strict=True)]
            if park:
                logs.append(
                    (event_id, user_id, channel, type_key, DeliveryStatus.PARKED, f"kill_switch_{candidate.mode}", day)
                )
            else:
                logs.append((event_id, user_id, channel, type_key, DeliveryStatus.QUEUED, "", day))

        # Every decision is known: store them while the messages go out, and wait for the broker's
        # acknowledgements on the writer thread too, while the runner polls and hands over the next
        # batch. The returned future succeeds only when the rows are stored and every message is
        # acknowledged; the runner commits the batch's offsets only then.
        stored = self.writer.submit(_store_decisions, logs, deferred)
        try:
            for topic, key, part, data in outgoing:
                self._acked.produce(topic, key, data, {Header.IDEMPOTENCY_KEY: part["id"]})
        except BaseException:
            stored.exception()  # let the write finish before the error goes up
            raise
        done = self.writer.submit(self._complete, stored)
        decisions: Tally = Tally()
        for (channel, status, reason), count in Tally((row[2], row[4], row[5]) for row in logs).items():
            decisions[channel, status, reason.partition(":")[0]] += count
        for labels, count in decisions.items():
            MESSAGES.labels(*labels).inc(count)
        return done

    def _complete(self, stored: Future) -> None:
        stored.result()  # already finished (same thread, submitted first); re-raises its error
        # Crash rather than commit: the batch is redelivered and dedup absorbs what did go out.
        self._acked.flush()

    def tick(self) -> None:
        """Called by the runner between polls: release quiet-hours messages that are due, and one
        bounded step of the table maintenance (a pass at start, then hourly)."""
        now = time.monotonic()
        if now - self._last_release >= RELEASE_INTERVAL:
            self._last_release = now
            release_due_messages(screen=self._release_screen)
        self._maintenance.tick()

    # -- building ------------------------------------------------------------------------------
    def _build_message(self, c: _Candidate, scratch: _BatchScratch, day: str | None = None) -> ChannelMessage:
        locale = c.contact.locale or scratch.language_code
        plan = scratch.plan(c.entry, c.channel, locale)
        if plan.error is not None:
            raise RenderError(plan.error)
        event, channel, user_id = c.event, c.channel, c.user_id
        event_id = event["id"]
        data = event.get("data") or {}
        # The template context of build_context: the event's data at the top level and under
        # `data`, plus event, user and (when a template or the e-mail header needs it) the link.
        context = dict(data)
        context["data"] = data
        context["event"] = {"id": event_id, "type": plan.key, "occurred_at": event.get("occurred_at")}
        context["user"] = {"id": user_id, "email": c.contact.email}
        link = None
        if plan.link:
            link = context["unsubscribe_url"] = scratch.unsubscribe_url(user_id, plan.category)
        if plan.renderer is not None:
            content = plan.renderer.render(context)
        elif channel == Channel.WEBHOOK:
            content = {"payload": {"type": plan.key, "event_id": event_id, "data": data}}
        else:
            content = {}
        if channel == Channel.PUSH or channel == Channel.INAPP:
            content["data"] = {"type": plan.key, "event_id": event_id, **scratch.push_data(data)}
        if channel == Channel.EMAIL and not plan.mandatory:
            content["list_unsubscribe"] = link
        return channel_message(
            event_id=event_id,
            user_id=user_id,
            channel=channel,
            type=plan.key,
            category=plan.category,
            urgency=plan.urgency,
            priority=plan.priority,
            created_at=scratch.created_at,
            locale=locale,
            to=c.to,
            content=content,
            meta=event.get("meta") or None,
            log_day=day,
        )

    @staticmethod
    def _drop_unknown_recipients(
        parsed: list[tuple[dict[str, Any], TypeEntry]], resolved: dict[str, int]
    ) -> list[tuple[dict[str, Any], TypeEntry]]:
        """The events whose recipient is known; the others are counted and logged (an id never
        identified, or erased since the event was accepted)."""
        kept = [(event, entry) for event, entry in parsed if event["recipient"] in resolved]
        EVENTS.labels("unknown_recipient").inc(len(parsed) - len(kept))
        log.warning("events for unknown recipients skipped", extra={"events": len(parsed) - len(kept)})
        return kept

    # -- dead letters ----------------------------------------------------------------------------
    def _event_to_dlq(self, message: Message, exc: InvalidEvent) -> None:
        EVENTS.labels(exc.error_class).inc()
        log.warning("event sent to DLQ", extra={"error_class": exc.error_class, "error": str(exc)})
        headers = dead_letter_headers(origin_topic=message.topic(), error_class=exc.error_class, error=str(exc))
        self._acked.produce(topic_name("events.dlq"), message.key(), message.value() or b"", headers)

    def _render_failure_to_dlq(self, c: _Candidate, exc: RenderError) -> None:
        key = idempotency_key(c.event["id"], c.user_id, c.channel)
        payload = orjson.dumps({"v": 1, "id": key, "event": c.event, "channel": c.channel})
        headers = dead_letter_headers(
            origin_topic=events_topic(), error_class="render_error", error=str(exc), idempotency_key=key
        )
        self._acked.produce(channel_topic(c.channel, "dlq"), str(c.user_id), payload, headers)


def _encode_within_limit(message: ChannelMessage) -> bytes:
    """The message as Kafka will carry it; RenderError (dead-lettered like any message that cannot be
    built) when it is larger than a producer may send, rather than an exception that stops the batch."""
    data = encode(message)
    if len(data) > MAX_MESSAGE_BYTES:
        raise RenderError(f"the rendered message is {len(data):,} bytes, more than Kafka takes ({MAX_MESSAGE_BYTES:,})")
    return data


def _store_decisions(logs: list[DispatchRow], deferred: list[Deferred]) -> None:
    if deferred:
        schedule_messages(deferred)
    record_dispatch_outcomes(logs)


def _stringly(data: dict[str, Any]) -> dict[str, str]:
    """Push data values must be strings (FCM); keep only scalars, stringified. (A tuple of types:
    ``isinstance`` with a ``X | Y`` union costs twice as much.)"""
    return {str(k): str(v) for k, v in data.items() if isinstance(v, (str, int, float, bool))}


def build_dispatcher_runner(
    *, batch_size: int | None = None, group: str | None = None, lane: Lane | None = None
) -> ConsumerRunner:
    """`run_dispatcher`'s loop over both events lanes, or over `lane` alone (several dispatchers
    share the partitions)."""
    from notifications.bus.consumers import consumer
    from notifications.redis_client import get_redis

    batch_size = batch_size or 1000
    return ConsumerRunner(
        consumer("dispatcher").runner_config(
            lane=lane,
            group=group,
            batch_size=batch_size,
            # A few milliseconds of dispatching: what an urgent event may wait for behind a digest
            # in a process that reads both lanes.
            bulk_batch_size=batch_size if lane is Lane.BULK else min(batch_size, 250),
            async_commit=True,
        ),
        Dispatcher(producer=dispatcher_producer(), redis_client=get_redis()),
    )
