"""Retention of the tables that grow with traffic but are not partitioned: their expired rows,
deleted in bounded batches. Why each table is bounded this way: `docs/architecture.md`, "Bounded
tables"."""

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

#: Rows deleted per transaction: its row locks, WAL and time (a few tens of ms) stay small, so a
#: batch run from the dispatcher's loop between two polls never holds the dispatch up for long.
DELETE_BATCH = 2000
#: A fanout run goes with its copy and launches through Django's collector, several times slower
#: per row than a plain delete: smaller batches take about as long.
FANOUT_DELETE_BATCH = 100


@dataclass(frozen=True)
class RetentionPolicy:
    """One table's retention: its setting (days; 0 keeps rows for good) and its expired rows."""

    name: str
    retention_days: Callable[[], int]
    expired: Callable[[dt.datetime], QuerySet]
    #: Rows per delete transaction.
    batch: int = DELETE_BATCH

    def cutoff(self, *, now: dt.datetime | None = None, retention: int | None = None) -> dt.datetime | None:
        """Rows older than this are expired; None when the retention keeps rows for good."""
        days = self.retention_days() if retention is None else retention
        if days <= 0:
            return None
        return (now or timezone.now()) - dt.timedelta(days=days)

    def delete_batches(
        self, *, now: dt.datetime | None = None, retention: int | None = None, batch: int | None = None
    ) -> Iterator[int]:
        """Delete the expired rows, `batch` at a time, each batch its own transaction; yields each
        batch's count and stops after a short one. Rows locked by a writer are left for the next run."""
        cutoff = self.cutoff(now=now, retention=retention)
        if cutoff is None:
            return
        batch = batch or self.batch
        while True:
            with transaction.atomic():
                queryset = self.expired(cutoff).order_by()  # any rows will do; a sort would read them all
                ids = list(queryset.select_for_update(skip_locked=True).values_list("pk", flat=True)[:batch])
                deleted = queryset.model.objects.filter(pk__in=ids).delete()[1].get(queryset.model._meta.label, 0)
            yield deleted
            if len(ids) < batch:
                return


def expired_accepted_events(cutoff: dt.datetime) -> QuerySet:
    """Accepted before the cutoff, except a fanout's event while its run is kept: its run's launch id
    is the event's id, so a repeat must stay a duplicate as long as the run exists."""
    from campaigns.models import Campaign
    from notifications.models import AcceptedEvent

    return AcceptedEvent.objects.filter(accepted_at__lt=cutoff).exclude(
        Exists(Campaign.objects.filter(launch_id=OuterRef("pk")))
    )


def expired_dead_letters(cutoff: dt.datetime) -> QuerySet:
    """Replayed or discarded before the cutoff; open entries never expire."""
    from notifications.dlq.models import DeadLetter, DeadLetterStatus

    resolved = [DeadLetterStatus.REPLAYED, DeadLetterStatus.DISCARDED]
    return DeadLetter.objects.filter(status__in=resolved, updated_at__lt=cutoff)


def expired_inbox_messages(cutoff: dt.datetime) -> QuerySet:
    from preferences.models import InboxMessage

    return InboxMessage.objects.filter(created_at__lt=cutoff)


def expired_fanouts(cutoff: dt.datetime) -> QuerySet:
    """Fanout runs that reached a final state before the cutoff (with their copy and launches)."""
    from campaigns.models import TERMINAL_STATES, Campaign, CampaignKind

    return Campaign.objects.filter(kind=CampaignKind.FANOUT, state__in=TERMINAL_STATES, state_changed_at__lt=cutoff)


#: Fanouts go before accepted events: an event whose run was deleted in this pass expires with it.
POLICIES = (
    RetentionPolicy("fanouts", lambda: settings.FANOUT_RETENTION_DAYS, expired_fanouts, FANOUT_DELETE_BATCH),
    RetentionPolicy("accepted_events", lambda: settings.ACCEPTED_EVENT_RETENTION_DAYS, expired_accepted_events),
    RetentionPolicy("dead_letters", lambda: settings.DLQ_RESOLVED_RETENTION_DAYS, expired_dead_letters),
    RetentionPolicy("inbox_messages", lambda: settings.INBOX_RETENTION_DAYS, expired_inbox_messages),
)
