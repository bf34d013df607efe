"""What support staff do with dead letters: replay, discard, re-apply rules, drain parked messages; audited."""

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone
from prometheus_client import Counter

from notifications.bus.topics import delivery_topic, events_topic
from notifications.dispatch.messages import Header
from notifications.dlq.models import DeadLetter, DeadLetterCategory, DeadLetterSource, DeadLetterStatus, DlqAudit
from notifications.dlq.rules import CompiledRule, RuleBook, TriageFacts, categorise
from notifications.outbox.services import OutboxMessage, enqueue_messages
from notifications.priority import Lane, lane_for, message_priority, type_priority

log = logging.getLogger(__name__)

REPLAY_PERMISSION = "dlq.replay_deadletter"
DISCARD_PERMISSION = "dlq.discard_deadletter"

#: Rows per replay/discard/re-categorise transaction: big enough to be fast (one outbox insert and
#: one UPDATE per chunk), small enough that a huge selection never holds one giant transaction.
CHUNK_SIZE = 2000

REPLAYED = Counter("dlq_replayed_total", "Dead letters replayed through the outbox", ["channel"])
DISCARDED = Counter("dlq_discarded_total", "Dead letters discarded by support staff", ["channel"])


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
