"""Paging on-call for unknown dead letters: at most once per fingerprint and window, by log, webhook, e-mail."""

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx
import redis
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone
from prometheus_client import Counter

from notifications.dlq.models import DeadLetter, DeadLetterCategory
from notifications.redis_connect import REDIS_ERRORS

log = logging.getLogger(__name__)

PAGES = Counter("dlq_pages_total", "Pages sent for unknown dead letters (one per fingerprint and window)")
PAGES_SUPPRESSED = Counter("dlq_pages_suppressed_total", "Unknown fingerprints already paged inside their window")
PAGE_DELIVERIES = Counter("dlq_page_deliveries_total", "Page deliveries by route and outcome", ["route", "outcome"])
WINDOW_FAIL_OPEN = Counter("dlq_page_window_fail_open_total", "Pages sent without the window check (Redis down)")

DEFAULT_WINDOW_SECONDS = 3600
#: A page must not hold up the consumer: a webhook that does not answer in this long is a failure.
WEBHOOK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Page:
    fingerprint: str
    count: int
    entry_id: int
    channel: str
    provider: str
    error_class: str
    cause_class: str
    error_code: str
    error_message: str
    recipient: str
    event_id: str

    def admin_url(self) -> str:
        base = getattr(settings, "PUBLIC_BASE_URL", "").rstrip("/")
        return f"{base}/admin/dlq/deadletter/?fingerprint={self.fingerprint}"

    def summary(self) -> str:
        where = f"{self.channel}{'/' + self.provider if self.provider else ''}"
        return (
            f"New unknown DLQ failure on {where}: {self.error_class or '?'}"
            f"{' / ' + self.cause_class if self.cause_class else ''}"
            f"{' code ' + self.error_code if self.error_code else ''} — {self.error_message[:300]}"
            f" ({self.count} entr{'y' if self.count == 1 else 'ies'} so far; fingerprint {self.fingerprint})"
        )


def page_settings() -> tuple[str, list[str], int]:
    url = getattr(settings, "DLQ_PAGE_WEBHOOK_URL", "") or ""
    emails = getattr(settings, "DLQ_PAGE_EMAILS", []) or []
    if isinstance(emails, str):
        emails = [e.strip() for e in emails.split(",") if e.strip()]
    window = int(getattr(settings, "DLQ_PAGE_WINDOW_SECONDS", DEFAULT_WINDOW_SECONDS) or DEFAULT_WINDOW_SECONDS)
    return url, list(emails), window


class Pager:
    """Takes a fingerprint's page window in Redis (`{prefix}dlq:page:<fingerprint>`, `SET NX EX`, shared
    by every triage process) and sends the page: always an ERROR log line and `dlq_pages_total`, plus
    the webhook and/or e-mail when configured. Redis down: fail open (page anyway, counted), since a
    duplicate page is better than a missed new failure. A failing route is logged and counted, never
    retried and never allowed to stop the consumer."""

    def __init__(
        self,
        *,
        redis_client: redis.Redis,
        key_prefix: str,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        webhook_url: str = "",
        emails: list[str] | None = None,
        http_post: Callable[..., httpx.Response] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis_client
        self.key_prefix = key_prefix
        self.window_seconds = window_seconds
        self.webhook_url = webhook_url
        self.emails = emails or []
        self.http_post = http_post or httpx.post
        self.clock = clock
        self._held: dict[str, float] = {}  # fingerprint → when its window ends (clock time)

    def window_key(self, fingerprint: str) -> str:
        return f"{self.key_prefix}dlq:page:{fingerprint}"

    def acquire_window(self, fingerprint: str) -> bool:
        """True when this fingerprint has not been paged in the current window (and now is)."""
        return self.acquire_windows([fingerprint])[fingerprint]

    def acquire_windows(self, fingerprints: list[str]) -> dict[str, bool]:
        """`acquire_window` for several fingerprints in one pipelined round trip. A window known to
        be held (taken or seen here) is answered from memory until it ends, without Redis: a flood
        of one failure costs no Redis call per batch."""
        now = self.clock()
        result: dict[str, bool] = {}
        ask = []
        for fp in dict.fromkeys(fingerprints):
            if self._held.get(fp, 0.0) > now:
                result[fp] = False
            else:
                ask.append(fp)
        if ask:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for fp in ask:
                    pipe.set(self.window_key(fp), "1", nx=True, ex=self.window_seconds)
                    pipe.pttl(self.window_key(fp))
                replies = pipe.execute()
            except REDIS_ERRORS as exc:
                WINDOW_FAIL_OPEN.inc(len(ask))
                log.warning("page window unavailable, paging anyway", extra={"count": len(ask), "error": repr(exc)})
                return {**result, **dict.fromkeys(ask, True)}
            for i, fp in enumerate(ask):
                acquired, ttl_ms = bool(replies[2 * i]), replies[2 * i + 1]
                result[fp] = acquired
                if isinstance(ttl_ms, int) and ttl_ms > 0:
                    self._held[fp] = now + ttl_ms / 1000
        if len(self._held) > 10_000:  # bounded memory: forget windows that are over
            self._held = {fp: until for fp, until in self._held.items() if until > now}
        suppressed = sum(1 for acquired in result.values() if not acquired)
        if suppressed:
            PAGES_SUPPRESSED.inc(suppressed)
        return {fp: result[fp] for fp in dict.fromkeys(fingerprints)}

    def page(self, page: Page) -> None:
        PAGES.inc()
        log.error(
            "PAGE: unknown dead letter",
            extra={"page": asdict(page), "admin_url": page.admin_url(), "window_seconds": self.window_seconds},
        )
        if self.webhook_url:
            self._post_webhook(page)
        if self.emails:
            self._send_email(page)

    def _post_webhook(self, page: Page) -> None:
        body = {"text": page.summary(), "admin_url": page.admin_url(), **asdict(page)}
        try:
            response = self.http_post(self.webhook_url, json=body, timeout=WEBHOOK_TIMEOUT_SECONDS)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            PAGE_DELIVERIES.labels("webhook", "failed").inc()
            # Never the message: httpx quotes the URL, and a chat webhook's URL is its credential.
            status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
            log.error(
                "page webhook failed",
                extra={"fingerprint": page.fingerprint, "error": type(exc).__name__, "status_code": status},
            )
            return
        PAGE_DELIVERIES.labels("webhook", "sent").inc()

    def _send_email(self, page: Page) -> None:
        try:
            send_mail(
                subject=f"[DLQ page] {page.summary()[:150]}",
                message=f"{page.summary()}\n\nOpen: {page.admin_url()}\n",
                from_email=None,
                recipient_list=self.emails,
            )
        except Exception as exc:  # any mail backend error: logged and counted, never fatal
            PAGE_DELIVERIES.labels("email", "failed").inc()
            log.error("page e-mail failed", extra={"fingerprint": page.fingerprint, "error": repr(exc)})
            return
        PAGE_DELIVERIES.labels("email", "sent").inc()


def pager_from_settings(redis_client: redis.Redis | None = None) -> Pager:
    from notifications.redis_client import get_redis

    url, emails, window = page_settings()
    return Pager(
        redis_client=redis_client or get_redis(),
        key_prefix=settings.REDIS_KEY_PREFIX,
        window_seconds=window,
        webhook_url=url,
        emails=emails,
    )


# --- the stored entries waiting for a page -----------------------------------------------------
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
