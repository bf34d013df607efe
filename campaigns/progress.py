"""Live campaign progress: Redis counters written by the expanders and workers, each outcome counted
once, flushed to PostgreSQL by the orchestrator. Keys, completion and the RedisError policy:
docs/architecture.md, "Campaigns" (Progress)."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from prometheus_client import Counter as PromCounter
from redis.commands.core import Script

from campaigns.models import ACTIVE_STATES, Campaign, CampaignState
from notifications.redis_connect import REDIS_ERRORS
from notifications.redis_keys import hash_tag, sharded_counter_keys
from notifications.redis_multi import evalsha_pipelined, get_many

log = logging.getLogger(__name__)

PROGRESS_DROPPED = PromCounter(
    "campaign_progress_dropped_total", "Campaign outcome counts lost because Redis was unavailable"
)
OUTCOMES = PromCounter("campaign_outcomes_total", "Campaign delivery outcomes counted", ["outcome"])

COUNTER_FIELDS = ("queued", "suppressed", "extra", "sent", "failed", "deduplicated", "halted")
RATE_WINDOW_SECONDS = 10
RATE_KEY_TTL = 120
#: Finished campaigns keep being flushed for a while: sends still in flight land after completion.
FLUSH_AFTER_FINISH = 3600


def _prefix() -> str:
    return settings.REDIS_KEY_PREFIX


def campaign_key(campaign_id: int | str, name: str) -> str:
    """``{prefix}campaign:{c<id>}:<name>``: a key of the campaign's own cluster slot."""
    return f"{_prefix()}campaign:{hash_tag(f'c{int(campaign_id)}')}:{name}"


def progress_key(campaign_id: int) -> str:
    return campaign_key(campaign_id, "progress")


def rate_key(campaign_id: int, what: str) -> str:
    return campaign_key(campaign_id, f"rate:{what}")


def expanded_key(campaign_id: int, launch_id: str) -> str:
    return campaign_key(campaign_id, f"expanded:{launch_id}")


def deferred_key(campaign_id: int, launch_id: str) -> str:
    return campaign_key(campaign_id, f"deferred:{launch_id}")


def cursor_key(campaign_id: int, launch_id: str, channel: str, batch: int | str) -> str:
    return campaign_key(campaign_id, f"cursor:{launch_id}:{channel}:{batch}")


def _client(redis_client: redis.Redis | None) -> redis.Redis:
    if redis_client is not None:
        return redis_client
    from notifications.redis_client import get_redis

    return get_redis()


# -- writing -------------------------------------------------------------------------------------------
#: Worker statuses → progress counter, for the outcomes counted by ``record_outcomes`` (a send is
#: counted when its dedup claim is confirmed: ``sent_tally``). "retrying" is not an outcome yet.
STATUS_TO_COUNTER = {
    "dlq": "failed",
    "failed": "failed",
    "deduplicated": "deduplicated",
    "skipped": "deduplicated",
    "suppressed": "suppressed",  # dropped by a worker because the campaign was cancelled (halt flag)
}

#: Counts each (counter, message) once (``lua/count_once.lua``).
COUNT_ONCE = Script(None, (Path(__file__).resolve().parent / "lua" / "count_once.lua").read_bytes())  # type: ignore[arg-type]


def counted_key(campaign_id: int) -> str:
    return campaign_key(campaign_id, "counted")


def sent_tally(campaign_id: int) -> str:
    """The counter in which the dedup store counts a campaign message's send, in the script that
    confirms it (``DedupStore.confirm_many(tallies=…)``): so ``sent`` counts every message the
    provider accepted exactly once, also when a worker dies between the send and settling its
    outcome. Sharded like the dedup keys (``read_sent``)."""
    return f"campaign:{int(campaign_id)}:sent"


def read_sent(client: redis.Redis, campaign_ids: Sequence[int]) -> dict[int, int]:
    """The campaigns' ``sent``: the sum of their counters' shards (one MGET, one per slot on a cluster)."""
    keys = {campaign_id: sharded_counter_keys(_prefix(), sent_tally(campaign_id)) for campaign_id in campaign_ids}
    values = get_many(client, [key for per in keys.values() for key in per])
    out, at = {}, 0
    for campaign_id, per in keys.items():
        out[campaign_id] = sum(int(v) for v in values[at : at + len(per)] if v)
        at += len(per)
    return out


def record_outcomes(
    outcomes: Sequence[tuple[str, str, dict[str, Any] | None]],
    *,
    redis_client: redis.Redis | None = None,
    strict: bool = False,
) -> int:
    """Count the settled outcomes of campaign messages: (message id, worker status, the message's
    ``meta``); messages that are not part of a campaign are ignored. Each (counter, message) is
    counted once. Sends only feed the send rate here (their count moves with the dedup confirm, see
    ``sent_tally``). Raises a Redis error only when ``strict``. Returns how many outcomes were new."""
    per_campaign: dict[tuple[int, str], list[str]] = defaultdict(list)
    sends: Counter = Counter()
    for message_id, status, meta in outcomes:
        if not meta or not meta.get("campaign_id") or not meta.get("launch_id"):
            continue
        campaign_id = int(meta["campaign_id"])
        if status == "sent":
            sends[campaign_id] += 1
            continue
        counter = STATUS_TO_COUNTER.get(status)
        if counter is not None:
            per_campaign[campaign_id, counter].append(message_id)
        if status == "suppressed":
            per_campaign[campaign_id, "halted"].append(message_id)
    if not per_campaign and not sends:
        return 0
    second = str(int(time.time()))
    ttl = int(getattr(settings, "CAMPAIGN_STATE_TTL_SECONDS", 14 * 24 * 3600))
    client = _client(redis_client)
    try:
        replies = evalsha_pipelined(
            client,
            COUNT_ONCE,
            [
                ([progress_key(campaign_id), counted_key(campaign_id)], [counter, ttl, *ids])
                for (campaign_id, counter), ids in per_campaign.items()
            ],
        )
        if sends:
            pipe = client.pipeline(transaction=False)
            for campaign_id, n in sends.items():
                pipe.hincrby(rate_key(campaign_id, "sent"), second, n)
                pipe.expire(rate_key(campaign_id, "sent"), RATE_KEY_TTL)
            pipe.execute()
    except REDIS_ERRORS:
        if strict:
            raise
        PROGRESS_DROPPED.inc(sum(len(ids) for ids in per_campaign.values()))
        log.warning("campaign progress not recorded (Redis unavailable)", exc_info=True)
        return 0
    counted = 0
    for ((_campaign, counter), _ids), new in zip(per_campaign.items(), replies, strict=True):
        OUTCOMES.labels(counter).inc(int(new))
        counted += int(new)
    return counted


def record_expansion(
    client: redis.Redis,
    *,
    campaign_id: int,
    launch_id: str,
    channel: str,
    batch: int | str,
    cursor: int,
    queued: int,
    suppressed: int,
    extra: int,
    done: bool,
    reasons: Mapping[str, int] | None = None,
    deferred_batches: Sequence[str] = (),
    deferred_users: int = 0,
    undeferred_users: int = 0,
    deferred_batch: bool = False,
) -> None:
    """Advance a batch's expansion cursor and its counters atomically (MULTI/EXEC). Raises RedisError:
    the expander then retries the chunk later (the worker's dedup absorbs the repeat).

    ``reasons`` counts the chunk's suppressions by reason (``suppressed:<reason>``);
    ``deferred_batches`` are the quiet-hours batches this chunk scheduled (their ids; pending until
    expanded) holding ``deferred_users`` recipients; ``undeferred_users`` are the recipients of a
    deferred batch this chunk worked through. ``deferred_batch``: this batch is itself a deferred one,
    so when done it leaves the pending set instead of joining the expanded set (which counts the
    orchestrator's batches for completion)."""
    ttl = int(getattr(settings, "CAMPAIGN_STATE_TTL_SECONDS", 14 * 24 * 3600))
    pipe = client.pipeline(transaction=True)
    pipe.set(cursor_key(campaign_id, launch_id, channel, batch), cursor, ex=ttl)
    key = progress_key(campaign_id)
    for name, n in (("queued", queued), ("suppressed", suppressed), ("extra", extra)):
        if n:
            pipe.hincrby(key, name, n)
    for reason, n in (reasons or {}).items():
        if n:
            pipe.hincrby(key, f"suppressed:{reason}", n)
    if deferred_users - undeferred_users:
        pipe.hincrby(key, "deferred", deferred_users - undeferred_users)
    if deferred_batches:
        pipe.sadd(deferred_key(campaign_id, launch_id), *(f"{channel}:{b}" for b in deferred_batches))
        pipe.expire(deferred_key(campaign_id, launch_id), ttl)
    if queued:
        second = str(int(time.time()))
        pipe.hincrby(rate_key(campaign_id, "queued"), second, queued)
        pipe.expire(rate_key(campaign_id, "queued"), RATE_KEY_TTL)
    if done and deferred_batch:
        pipe.srem(deferred_key(campaign_id, launch_id), f"{channel}:{batch}")
    elif done:
        pipe.sadd(expanded_key(campaign_id, launch_id), f"{channel}:{batch}")
        pipe.expire(expanded_key(campaign_id, launch_id), ttl)
    pipe.execute()


def read_cursor(client: redis.Redis, *, campaign_id: int, launch_id: str, channel: str, batch: int | str) -> int:
    raw = client.get(cursor_key(campaign_id, launch_id, channel, batch))
    return int(raw) if raw else 0


def expanded_count(client: redis.Redis, *, campaign_id: int, launch_id: str) -> int:
    return int(client.scard(expanded_key(campaign_id, launch_id)))


def pending_deferred_count(client: redis.Redis, *, campaign_id: int, launch_id: str) -> int:
    """Quiet-hours batches of the launch scheduled but not yet expanded."""
    return int(client.scard(deferred_key(campaign_id, launch_id)))


# -- reading -------------------------------------------------------------------------------------------
def outstanding(counters: Mapping[str, int]) -> int:
    """Queued messages without an outcome yet (sent, failed, or dropped by a worker)."""
    return max(0, counters["queued"] - counters["sent"] - counters["failed"] - counters["halted"])


def read_counters(client: redis.Redis, campaign_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    ids = list(campaign_ids)
    if not ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for campaign_id in ids:
        pipe.hgetall(progress_key(campaign_id))
    sent = read_sent(client, ids)
    out = {}
    for campaign_id, raw in zip(ids, pipe.execute(), strict=True):
        values = {k.decode(): int(v) for k, v in raw.items()}
        values["sent"] = sent[campaign_id]
        out[campaign_id] = {name: values.get(name, 0) for name in COUNTER_FIELDS}
    return out


def read_details(client: redis.Redis, campaign_id: int) -> dict[str, Any]:
    """The expansion's suppressions by reason and the recipients waiting for their quiet hours to end."""
    values = {k.decode(): int(v) for k, v in client.hgetall(progress_key(campaign_id)).items()}
    return {
        "deferred": max(0, values.get("deferred", 0)),
        "suppressed_by_reason": {
            name.split(":", 1)[1]: n for name, n in sorted(values.items()) if name.startswith("suppressed:") and n
        },
    }


def read_rates(client: redis.Redis, campaign_id: int, *, now: float | None = None) -> dict[str, float]:
    """Per-second rates over the last complete RATE_WINDOW_SECONDS (the current second is partial)."""
    current = int(now if now is not None else time.time())
    seconds = [str(s) for s in range(current - RATE_WINDOW_SECONDS, current)]
    pipe = client.pipeline(transaction=False)
    pipe.hmget(rate_key(campaign_id, "sent"), seconds)
    pipe.hmget(rate_key(campaign_id, "queued"), seconds)
    sent, queued = pipe.execute()
    return {
        "send_rate": sum(int(v) for v in sent if v) / RATE_WINDOW_SECONDS,
        "queue_rate": sum(int(v) for v in queued if v) / RATE_WINDOW_SECONDS,
    }


def flush_progress(*, redis_client: redis.Redis | None = None, now=None) -> int:
    """Copy the Redis counters of active (and recently finished) campaigns into PostgreSQL."""
    now = now or timezone.now()
    recent = now - timezone.timedelta(seconds=FLUSH_AFTER_FINISH)
    campaigns = list(
        Campaign.objects.filter(launch_id__isnull=False)
        .filter(Q(state__in=ACTIVE_STATES) | Q(finished_at__gte=recent))
        .values_list("pk", flat=True)
    )
    if not campaigns:
        return 0
    try:
        counters = read_counters(_client(redis_client), campaigns)
    except REDIS_ERRORS:
        log.warning("campaign progress flush skipped (Redis unavailable)", exc_info=True)
        return 0
    with transaction.atomic():
        for campaign_id, values in counters.items():
            Campaign.objects.filter(pk=campaign_id).update(
                queued=values["queued"],
                suppressed_expansion=values["suppressed"],
                extra_messages=values["extra"],
                sent=values["sent"],
                failed=values["failed"],
                deduplicated=values["deduplicated"],
                progress_flushed_at=now,
            )
    return len(counters)


def progress_snapshot(campaign: Campaign, *, redis_client: redis.Redis | None = None) -> dict[str, Any]:
    """Everything the admin's progress panel shows: live from Redis, or the last flush without it."""
    values = {
        "queued": campaign.queued,
        "suppressed": campaign.suppressed_expansion,
        "extra": campaign.extra_messages,
        "sent": campaign.sent,
        "failed": campaign.failed,
        "deduplicated": campaign.deduplicated,
    }
    rates = {"send_rate": 0.0, "queue_rate": 0.0}
    details: dict[str, Any] = {"deferred": None, "suppressed_by_reason": {}}
    live = False
    if campaign.launch_id is not None:
        try:
            client = _client(redis_client)
            values = read_counters(client, [campaign.pk])[campaign.pk]
            rates = read_rates(client, campaign.pk)
            details = read_details(client, campaign.pk)
            live = True
        except REDIS_ERRORS:
            log.warning("campaign progress read from PostgreSQL (Redis unavailable)")
    channels = len(campaign.channels or [])
    audience = campaign.audience_size
    suppressed = campaign.suppressed_preferences + values["suppressed"]
    total = (audience * channels + values["extra"]) if audience is not None else None
    done = suppressed + values["sent"] + values["failed"]
    percent = min(100.0, 100.0 * done / total) if total else (100.0 if total == 0 else 0.0)
    if campaign.state == CampaignState.COMPLETED and total is not None and done >= total:
        percent = 100.0
    rate = rates["send_rate"] or rates["queue_rate"]
    remaining = max(0, total - done) if total is not None else None
    eta = (remaining / rate) if (rate and remaining is not None) else None
    return {
        "id": campaign.pk,
        "state": campaign.state,
        "state_label": campaign.get_state_display(),
        "audience_size": audience,
        "channels": list(campaign.channels or []),
        "batches_emitted": campaign.batches_emitted,
        "recipients_emitted": campaign.recipients_emitted,
        "queued": values["queued"],
        "sent": values["sent"],
        "suppressed": suppressed,
        "failed": values["failed"],
        "deduplicated": values["deduplicated"],
        "deferred": details["deferred"],
        "suppressed_by_reason": details["suppressed_by_reason"],
        "total": total,
        "done": done,
        "percent": round(percent, 1),
        "send_rate": round(rates["send_rate"], 1),
        "queue_rate": round(rates["queue_rate"], 1),
        "eta_seconds": round(eta) if eta is not None else None,
        "live": live,
        "failure_reason": campaign.failure_reason,
        "updated_at": timezone.now().isoformat(),
    }
