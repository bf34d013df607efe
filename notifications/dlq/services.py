"""DLQ services: store dead letters in batches, categorise and fingerprint them, page on the unknown,
replay through the outbox, discard, re-apply rules. Admin actions and the triage consumer call these.

Writes run in transactions; a replay leaves only through the outbox, in the same transaction that
marks the entries replayed and counts them in the audit row.
"""

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone
from prometheus_client import Counter

from notifications.bus.topics import delivery_topic, events_topic
from notifications.dispatch.messages import Header
from notifications.dlq.models import DeadLetter, DeadLetterCategory, DeadLetterSource, DeadLetterStatus, DlqAudit
from notifications.dlq.rules import CompiledRule, InvalidRule, TriageFacts, categorise, compile_rule, fingerprint
from notifications.outbox.services import OutboxMessage, enqueue_messages
from notifications.priority import Lane, lane_for, message_priority, type_priority

log = logging.getLogger(__name__)

REPLAY_PERMISSION = "dlq.replay_deadletter"
DISCARD_PERMISSION = "dlq.discard_deadletter"

#: Rows per replay/discard/re-categorise transaction: big enough to be fast (one outbox insert and
#: one UPDATE per chunk), small enough that a huge selection never holds one giant transaction.
CHUNK_SIZE = 2000
#: A replayed entry is reopened by a new dead letter of the same message that failed after the
#: replay. Worker clocks and the database clock may differ a little; this much earlier still counts.
REOPEN_CLOCK_TOLERANCE_SECONDS = 30
#: How often the triage consumer re-reads the rules (admin edits apply without a restart).
RULES_REFRESH_SECONDS = 5.0

REPLAYED = Counter("dlq_replayed_total", "Dead letters replayed through the outbox", ["channel"])
DISCARDED = Counter("dlq_discarded_total", "Dead letters discarded by support staff", ["channel"])


# --- entries --------------------------------------------------------------------------------------
@dataclass
class DeadLetterEntry:
    """A DLQ message, parsed and ready to store (see `triage.parse_dead_letter`)."""

    message_id: str
    channel: str
    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    first_failed_at: datetime
    last_failed_at: datetime
    provider: str = ""
    recipient: str = ""
    user_id: int | None = None
    event_id: str = ""
    event_type: str = ""
    origin_topic: str = ""
    message_key: str = ""
    payload: Any = None
    raw_payload: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    error_class: str = ""
    cause_class: str = ""
    error_code: str = ""
    error_status: int | None = None
    error_message: str = ""
    errors: list[Any] = field(default_factory=list)
    attempts: int = 0
    category: str = DeadLetterCategory.UNKNOWN
    rule_id: int | None = None
    fingerprint: str = ""

    def facts(self) -> TriageFacts:
        return TriageFacts(
            channel=self.channel,
            provider=self.provider,
            error_class=self.error_class,
            cause_class=self.cause_class,
            code=self.error_code,
            status=self.error_status,
            message=self.error_message,
        )


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    id: int
    message_id: str
    channel: str
    category: str
    fingerprint: str
    inserted: bool  # False: an existing replayed row was reopened by a new failure


# --- rules ----------------------------------------------------------------------------------------
class RuleBook:
    """The enabled triage rules, compiled, re-read every `refresh_seconds` (clock injectable).

    A rule that does not compile (a bad regex saved around the admin's validation) is skipped and
    logged, never allowed to stop the consumer."""

    def __init__(
        self,
        *,
        refresh_seconds: float = RULES_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        loader: Callable[[], Iterable[Any]] | None = None,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.loader = loader or _load_rule_rows
        self._rules: list[CompiledRule] = []
        self._loaded_at = float("-inf")

    def rules(self) -> list[CompiledRule]:
        if self.clock() - self._loaded_at >= self.refresh_seconds:
            self.refresh()
        return self._rules

    def refresh(self) -> None:
        compiled = []
        for row in self.loader():
            if not row.enabled:
                continue
            try:
                compiled.append(compile_rule(row))
            except InvalidRule as exc:
                log.error("triage rule skipped", extra={"rule": row.name, "error": str(exc)})
        self._rules = sorted(compiled, key=lambda r: (r.priority, r.id or 0))
        self._loaded_at = self.clock()


def _load_rule_rows() -> list[Any]:
    from notifications.dlq.models import TriageRule

    return list(TriageRule.objects.filter(enabled=True))


def categorise_entries(entries: Iterable[DeadLetterEntry], rules: Sequence[CompiledRule]) -> None:
    """Set category, matching rule and fingerprint on each entry (in place)."""
    for entry in entries:
        facts = entry.facts()
        entry.category, rule = categorise(facts, rules)
        entry.rule_id = rule.id if rule is not None else None
        entry.fingerprint = fingerprint(facts)


# --- storing --------------------------------------------------------------------------------------
_RECORD_COLUMNS = (
    ("message_id", "text"),
    ("channel", "text"),
    ("provider", "text"),
    ("recipient", "text"),
    ("user_id", "bigint"),
    ("event_id", "text"),
    ("event_type", "text"),
    ("dlq_topic", "text"),
    ("dlq_partition", "integer"),
    ("dlq_offset", "bigint"),
    ("origin_topic", "text"),
    ("message_key", "text"),
    ("payload", "jsonb"),
    ("raw_payload", "text"),
    ("headers", "jsonb"),
    ("error_class", "text"),
    ("cause_class", "text"),
    ("error_code", "text"),
    ("error_message", "text"),
    ("errors", "jsonb"),
    ("attempts", "integer"),
    ("first_failed_at", "timestamptz"),
    ("last_failed_at", "timestamptz"),
    ("category", "text"),
    ("rule_id", "bigint"),
    ("fingerprint", "text"),
    ("page_pending", "boolean"),
)
#: Columns a new failure of a replayed message overwrites when it reopens the row.
_REOPEN_COLUMNS = (
    "provider", "dlq_topic", "dlq_partition", "dlq_offset", "origin_topic", "headers", "error_class",
    "cause_class", "error_code", "error_message", "errors", "attempts", "last_failed_at", "category",
    "rule_id", "fingerprint", "page_pending",
)  # fmt: skip


def _store_sql() -> str:
    table = DeadLetter._meta.db_table
    names = [name for name, _ in _RECORD_COLUMNS]
    record = ", ".join(f"{name} {kind}" for name, kind in _RECORD_COLUMNS)
    reopen = ", ".join(f"{name} = EXCLUDED.{name}" for name in _REOPEN_COLUMNS)
    return f"""
        INSERT INTO {table} AS d ({", ".join(names)}, status, failure_count, replay_count,
                                  discarded_reason, stored_at, updated_at)
        SELECT {", ".join(f"r.{n}" for n in names)}, %(status)s, 1, 0, '', %(now)s, %(now)s
        FROM jsonb_to_recordset(%(rows)s::jsonb) AS r({record})
        -- Skip, before the insert, what certainly changes nothing (a redelivery): a row that
        -- reaches ON CONFLICT DO UPDATE is locked even when the WHERE below is false, and that
        -- lock is a heap write plus WAL per row. A concurrent insert still ends in ON CONFLICT.
        WHERE NOT EXISTS (
            SELECT 1 FROM {table} AS e
            WHERE e.message_id = r.message_id
              AND (e.status <> %(replayed)s
                   OR (e.dlq_topic, e.dlq_partition, e.dlq_offset) = (r.dlq_topic, r.dlq_partition, r.dlq_offset))
        )
        ON CONFLICT (message_id) DO UPDATE SET {reopen},
            first_failed_at = LEAST(d.first_failed_at, EXCLUDED.first_failed_at),
            status = %(status)s, failure_count = d.failure_count + 1, updated_at = EXCLUDED.updated_at
        WHERE d.status = %(replayed)s
          AND (d.dlq_topic, d.dlq_partition, d.dlq_offset)
              IS DISTINCT FROM (EXCLUDED.dlq_topic, EXCLUDED.dlq_partition, EXCLUDED.dlq_offset)
          AND (EXCLUDED.headers ? %(replay_header)s
               OR EXCLUDED.last_failed_at > d.replayed_at - make_interval(secs => %(tolerance)s))
        RETURNING d.id, d.message_id, d.channel, d.category, d.fingerprint, (d.xmax = 0) AS inserted
    """  # noqa: S608 - only the table and column names (constants) are interpolated


def store_dead_letters(*, entries: Sequence[DeadLetterEntry]) -> list[StoredDeadLetter]:
    """Store entries with one `INSERT … ON CONFLICT` statement; returns the rows that are new (or
    reopened). Re-storing the same DLQ message never changes or duplicates a row; a new dead
    letter of a message that was replayed (it failed again) reopens its row.

    Entries must be categorised first (`categorise_entries`). Unknown ones are stored with
    `page_pending`, so a crash between storing and paging never loses the page.
    """
    latest: dict[str, DeadLetterEntry] = {}
    for entry in entries:  # ON CONFLICT cannot touch one row twice in a statement: keep the latest
        latest[entry.message_id] = entry
    if not latest:
        return []
    rows = []
    for e in latest.values():
        rows.append(
            {
                "message_id": e.message_id,
                "channel": e.channel,
                "provider": e.provider,
                "recipient": e.recipient,
                "user_id": e.user_id,
                "event_id": e.event_id,
                "event_type": e.event_type,
                "dlq_topic": e.dlq_topic,
                "dlq_partition": e.dlq_partition,
                "dlq_offset": e.dlq_offset,
                "origin_topic": e.origin_topic,
                "message_key": e.message_key,
                "payload": e.payload,
                "raw_payload": e.raw_payload,
                "headers": e.headers,
                "error_class": e.error_class,
                "cause_class": e.cause_class,
                "error_code": e.error_code,
                "error_message": e.error_message,
                "errors": e.errors,
                "attempts": e.attempts,
                "first_failed_at": e.first_failed_at,
                "last_failed_at": e.last_failed_at,
                "category": e.category,
                "rule_id": e.rule_id,
                "fingerprint": e.fingerprint or fingerprint(e.facts()),
                "page_pending": e.category == DeadLetterCategory.UNKNOWN,
            }
        )
    params = {
        "rows": orjson.dumps(rows).decode(),
        "now": timezone.now(),
        "status": DeadLetterStatus.OPEN,
        "replayed": DeadLetterStatus.REPLAYED,
        "replay_header": Header.REPLAY,
        "tolerance": REOPEN_CLOCK_TOLERANCE_SECONDS,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_store_sql(), params)
        return [StoredDeadLetter(*row) for row in cursor.fetchall()]


# --- paging ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PageReport:
    paged: int = 0  # fingerprints a human was paged for
    suppressed: int = 0  # fingerprints already paged inside their window
    entries: int = 0  # pending entries looked at


def page_unknown_dead_letters(*, pager, limit: int = 5000) -> PageReport:
    """Page on-call for unknown entries waiting for it: once per fingerprint per window.

    Pending rows are locked (SKIP LOCKED: several triage processes never page the same rows), the
    window is taken (Redis `SET NX EX`), the page goes out, and only then is `page_pending`
    cleared, in the same transaction. A crash before the commit leaves the rows pending; the retry
    finds the window taken, so a human is never paged twice for one fingerprint and window.
    """
    from notifications.dlq.paging import Page

    paged = suppressed = 0
    with transaction.atomic():
        pending = list(
            DeadLetter.objects.filter(page_pending=True)
            .order_by("id")
            .select_for_update(skip_locked=True)
            .only("id", "fingerprint", "category", "channel", "provider", "error_class", "cause_class",
                  "error_code", "error_message", "recipient", "event_id")[:limit]
        )  # fmt: skip
        if not pending:
            return PageReport()
        groups: dict[str, list[DeadLetter]] = defaultdict(list)
        for row in pending:
            if row.category == DeadLetterCategory.UNKNOWN:  # a rule may have categorised it meanwhile
                groups[row.fingerprint].append(row)
        now = timezone.now()
        windows = pager.acquire_windows(list(groups))
        for fp, rows in groups.items():
            if not windows[fp]:
                suppressed += 1
                continue
            first = rows[0]
            pager.page(
                Page(
                    fingerprint=fp,
                    count=len(rows),
                    entry_id=first.id,
                    channel=first.channel,
                    provider=first.provider,
                    error_class=first.error_class,
                    cause_class=first.cause_class,
                    error_code=first.error_code,
                    error_message=first.error_message,
                    recipient=first.recipient,
                    event_id=first.event_id,
                )
            )
            DeadLetter.objects.filter(pk=first.pk).update(paged_at=now)
            paged += 1
        DeadLetter.objects.filter(pk__in=[r.pk for r in pending]).update(page_pending=False)
    return PageReport(paged=paged, suppressed=suppressed, entries=len(pending))


# --- replay ---------------------------------------------------------------------------------------
REPLAYABLE_STATUSES = (DeadLetterStatus.OPEN, DeadLetterStatus.DISCARDED)
DISCARDABLE_STATUSES = (DeadLetterStatus.OPEN, DeadLetterStatus.REPLAYED)


@dataclass(frozen=True, slots=True)
class ActionResult:
    audit_id: int
    count: int  # acted upon
    skipped: int  # selected but left alone (already replayed/discarded, nothing to replay)


def _require(actor, permission: str) -> None:
    if actor is None or not actor.is_active or not actor.has_perm(permission):
        raise PermissionDenied(f"{getattr(actor, 'username', actor)!s} may not {permission.split('.')[1]}")


def _selection(queryset: QuerySet | None, ids: Sequence[int] | None) -> QuerySet:
    if queryset is None and ids is None:
        raise ValueError("pass a queryset or ids")
    qs = DeadLetter.objects.all() if queryset is None else queryset
    if ids is not None:
        qs = qs.filter(pk__in=list(ids))
    return qs


def _chunks_of_ids(qs: QuerySet, chunk_size: int) -> Iterable[list[int]]:
    """The selection's primary keys, in keyset-paginated chunks (never OFFSET, never all at once)."""
    last = 0
    base = qs.order_by().values_list("pk", flat=True)
    while True:
        chunk = list(base.filter(pk__gt=last).order_by("pk")[:chunk_size])
        if not chunk:
            return
        last = chunk[-1]
        yield chunk


def _replays_as_event(entry: DeadLetter) -> bool:
    """The dispatcher's dead letters (the events DLQ, and render failures: their origin is an events
    topic) are replayed as their event; everything else as the channel message it was."""
    return entry.channel == DeadLetterSource.EVENTS or entry.origin_topic in {events_topic(lane) for lane in Lane}


def replay_message(entry: DeadLetter, audit_id: int) -> OutboxMessage | None:
    """The outbox message that replays `entry`, or None when there is nothing sendable to replay
    (the original was not JSON, or not a v1 message). Headers: the idempotency key (so the worker
    still deduplicates) and the replay marker; no attempt/errors headers (a fresh attempt count).
    The topic is the lane the message's class belongs in now, whatever lane it failed in."""
    payload = entry.payload
    if not isinstance(payload, dict):
        return None
    key = entry.message_key or (str(entry.user_id) if entry.user_id is not None else entry.recipient)
    if _replays_as_event(entry):
        if entry.channel != DeadLetterSource.EVENTS:
            # A render failure: the dispatcher wrapped the event; replaying re-dispatches the event
            # (channels already delivered are skipped by the workers' dedup).
            payload = payload.get("event")
            if not isinstance(payload, dict) or not payload.get("id"):
                return None
            recipient = str(payload.get("recipient", ""))
            idempotency_key = f"{payload['id']}:{recipient}" if recipient else str(payload["id"])
            key = recipient or key
        else:
            idempotency_key = entry.message_id
        topic = events_topic(lane_for(type_priority(str(payload.get("type") or ""))))
    else:
        if payload.get("v") != 1 or not payload.get("id"):
            return None
        idempotency_key = str(payload["id"])
        topic = delivery_topic(entry.channel, lane_for(message_priority(payload)))
    headers = {Header.IDEMPOTENCY_KEY: idempotency_key, Header.REPLAY: str(audit_id)}
    return OutboxMessage(topic=topic, key=key or "", payload=payload, headers=headers)


def _audit_start(*, action: str, actor, requested: int, selection: str, reason: str = "") -> DlqAudit:
    return DlqAudit.objects.create(
        action=action,
        actor=actor if getattr(actor, "pk", None) else None,
        actor_name=getattr(actor, "get_username", lambda: str(actor))(),
        requested=requested,
        selection=selection[:5000],
        reason=reason[:500],
    )


def replay_dead_letters(
    *,
    actor,
    queryset: QuerySet | None = None,
    ids: Sequence[int] | None = None,
    selection: str = "",
    chunk_size: int = CHUNK_SIZE,
) -> ActionResult:
    """Replay the selected entries through the outbox, audited.

    Per chunk, in one transaction: lock the rows still replayable (open or discarded; replayed ones
    are skipped, so two support people replaying the same filter never double-replay), write one
    outbox row each to the original topic, mark them replayed, add them to the audit's count.
    """
    _require(actor, REPLAY_PERMISSION)
    qs = _selection(queryset, ids)
    audit = _audit_start(action=DlqAudit.Action.REPLAY, actor=actor, requested=qs.count(), selection=selection)
    done = skipped = 0
    for chunk in _chunks_of_ids(qs, chunk_size):
        with transaction.atomic():
            rows = list(
                DeadLetter.objects.select_for_update()
                .filter(pk__in=chunk, status__in=REPLAYABLE_STATUSES)
                .only("id", "message_id", "channel", "origin_topic", "message_key", "user_id", "recipient", "payload")
            )
            messages, replayed, per_channel = [], [], defaultdict(int)
            for row in rows:
                message = replay_message(row, audit.pk)
                if message is None:
                    continue
                messages.append(message)
                replayed.append(row.pk)
                per_channel[row.channel] += 1
            enqueue_messages(messages)
            now = timezone.now()
            DeadLetter.objects.filter(pk__in=replayed).update(
                status=DeadLetterStatus.REPLAYED,
                replayed_at=now,
                replay_count=F("replay_count") + 1,
                last_audit=audit,
                page_pending=False,
                updated_at=now,
            )
            chunk_skipped = len(chunk) - len(replayed)
            DlqAudit.objects.filter(pk=audit.pk).update(
                count=F("count") + len(replayed), skipped=F("skipped") + chunk_skipped
            )
        done += len(replayed)
        skipped += chunk_skipped
        for channel, n in per_channel.items():
            REPLAYED.labels(channel).inc(n)
    DlqAudit.objects.filter(pk=audit.pk).update(finished_at=timezone.now())
    log.info(
        "dead letters replayed",
        extra={"audit": audit.pk, "actor": audit.actor_name, "count": done, "skipped": skipped},
    )
    return ActionResult(audit_id=audit.pk, count=done, skipped=skipped)


def discard_dead_letters(
    *,
    actor,
    reason: str,
    queryset: QuerySet | None = None,
    ids: Sequence[int] | None = None,
    selection: str = "",
    chunk_size: int = CHUNK_SIZE,
) -> ActionResult:
    """Close the selected entries without sending them, with a reason, audited."""
    _require(actor, DISCARD_PERMISSION)
    reason = (reason or "").strip()
    if not reason:
        raise ValueError("a discard needs a reason")
    qs = _selection(queryset, ids)
    audit = _audit_start(
        action=DlqAudit.Action.DISCARD, actor=actor, requested=qs.count(), selection=selection, reason=reason
    )
    done = skipped = 0
    for chunk in _chunks_of_ids(qs, chunk_size):
        with transaction.atomic():
            now = timezone.now()
            counts = defaultdict(int)
            for channel in (
                DeadLetter.objects.filter(pk__in=chunk, status__in=DISCARDABLE_STATUSES)
                .select_for_update()
                .values_list("channel", flat=True)
            ):
                counts[channel] += 1
            n = DeadLetter.objects.filter(pk__in=chunk, status__in=DISCARDABLE_STATUSES).update(
                status=DeadLetterStatus.DISCARDED,
                discarded_reason=reason[:500],
                last_audit=audit,
                page_pending=False,
                updated_at=now,
            )
            DlqAudit.objects.filter(pk=audit.pk).update(count=F("count") + n, skipped=F("skipped") + len(chunk) - n)
        done += n
        skipped += len(chunk) - n
        for channel, c in counts.items():
            DISCARDED.labels(channel).inc(c)
    DlqAudit.objects.filter(pk=audit.pk).update(finished_at=timezone.now())
    log.info("dead letters discarded", extra={"audit": audit.pk, "actor": audit.actor_name, "count": done})
    return ActionResult(audit_id=audit.pk, count=done, skipped=skipped)


# --- re-applying rules ------------------------------------------------------------------------------
def recategorise_dead_letters(
    *,
    queryset: QuerySet | None = None,
    rules: Sequence[CompiledRule] | None = None,
    actor=None,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, int]:
    """Re-apply the rules to entries (by default: every open entry still `unknown`, i.e. the
    uncategorised ones). Returns {new category: count} of the entries that changed."""
    if rules is None:
        book = RuleBook()
        rules = book.rules()
    qs = (
        queryset
        if queryset is not None
        else DeadLetter.objects.filter(category=DeadLetterCategory.UNKNOWN, status=DeadLetterStatus.OPEN)
    )
    changed: dict[str, int] = defaultdict(int)
    fields = ("id", "channel", "provider", "error_class", "cause_class", "error_code", "errors", "error_message",
              "category", "rule")  # fmt: skip
    for chunk in _chunks_of_ids(qs, chunk_size):
        with transaction.atomic():
            updates = []
            for row in DeadLetter.objects.filter(pk__in=chunk).select_for_update().only(*fields):
                last = row.errors[-1] if row.errors and isinstance(row.errors[-1], dict) else {}
                facts = TriageFacts(
                    channel=row.channel,
                    provider=row.provider,
                    error_class=row.error_class,
                    cause_class=row.cause_class,
                    code=row.error_code,
                    status=_int_or_none(last.get("status")),
                    message=row.error_message,
                )
                category, rule = categorise(facts, rules)
                rule_id = rule.id if rule is not None else None
                if category != row.category or rule_id != row.rule_id:
                    row.category, row.rule_id = category, rule_id
                    if category != DeadLetterCategory.UNKNOWN:
                        row.page_pending = False
                    updates.append(row)
                    changed[category] += 1
            DeadLetter.objects.bulk_update(updates, ["category", "rule", "page_pending"], batch_size=chunk_size)
    if actor is not None:
        total = sum(changed.values())
        audit = _audit_start(
            action=DlqAudit.Action.RECATEGORISE,
            actor=actor,
            requested=total,
            selection=orjson.dumps(dict(changed)).decode(),
        )
        DlqAudit.objects.filter(pk=audit.pk).update(count=total, finished_at=timezone.now())
    return dict(changed)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# --- draining parked messages (the existing kill-switch drain, audited) ----------------------------
def drain_parked_channel(*, channel: str, actor) -> ActionResult:
    """Run the existing `drain_parked` for one channel on behalf of support staff, audited.
    Raises `DrainRefused` while the channel's switch still delays or pauses."""
    from notifications.dispatch.drain import drain_parked

    _require(actor, REPLAY_PERMISSION)
    result = drain_parked(channel=channel)
    audit = _audit_start(action=DlqAudit.Action.DRAIN, actor=actor, requested=result.moved, selection=channel)
    DlqAudit.objects.filter(pk=audit.pk).update(count=result.moved, finished_at=timezone.now())
    return ActionResult(audit_id=audit.pk, count=result.moved, skipped=0)
