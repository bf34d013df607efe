"""The one maintenance of the tables that grow with traffic: the delivery log's daily partitions and
the other tables' retention, run by `manage.py maintain_tables` and by the dispatcher's loop. Why,
in `docs/architecture.md`, "Bounded tables"."""

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

from django.db import DatabaseError
from prometheus_client import Counter

from notifications.log_partitions import maintain_partitions
from notifications.outages import dependency_of
from notifications.retention import POLICIES, RetentionPolicy

log = logging.getLogger(__name__)

#: How often a long-running role starts a maintenance pass (run_dispatcher's tick).
MAINTENANCE_INTERVAL = 3600.0

MAINTENANCE_FAILURES = Counter(
    "table_maintenance_failures_total", "Table maintenance steps refused by PostgreSQL", ["table"]
)


@dataclass
class TableChanges:
    """What one step did to one table."""

    table: str
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    deleted: int = 0
    #: Why the step did nothing: "locked", "lock_timeout" or "kept for good".
    skipped: str = ""


def delivery_log_steps(*, retention: int | None = None, ahead: int | None = None, **_) -> Iterator[TableChanges]:
    changes = maintain_partitions(ahead=ahead, retention=retention)
    yield TableChanges("delivery_log", created=changes.created, dropped=changes.dropped, skipped=changes.skipped)


def retention_steps(
    policy: RetentionPolicy, *, retention: int | None = None, batch: int | None = None, **_
) -> Iterator[TableChanges]:
    if policy.cutoff(retention=retention) is None:
        yield TableChanges(policy.name, skipped="kept for good")
        return
    for deleted in policy.delete_batches(retention=retention, batch=batch):
        yield TableChanges(policy.name, deleted=deleted)


#: Every bounded table, in the order a pass maintains them: name → its steps (each one bounded).
TABLES: dict[str, Callable[..., Iterator[TableChanges]]] = {
    "delivery_log": delivery_log_steps,
    **{policy.name: partial(retention_steps, policy) for policy in POLICIES},
}


class MaintenanceLoop:
    """The maintenance for a long-running role's loop: a pass every `interval` seconds, one bounded
    step (a partition run or one delete batch) per `tick`, so a big backlog never holds the loop up.
    A refused statement is logged and counted and its table left to the next pass; PostgreSQL being
    away propagates (the loop rides it out)."""

    def __init__(self, *, interval: float = MAINTENANCE_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._due = -math.inf
        self._pending: list[str] = []
        self._table = ""
        self._steps: Iterator[TableChanges] | None = None

    def tick(self) -> TableChanges | None:
        """Run the next step of the pass in hand, or start a pass when one is due."""
        if self._steps is None:
            if not self._pending:
                if self.clock() < self._due:
                    return None
                self._due = self.clock() + self.interval
                self._pending = list(TABLES)
            self._table = self._pending.pop(0)
            self._steps = TABLES[self._table]()
        try:
            return next(self._steps)
        except StopIteration:
            self._steps = None
            return None
        except DatabaseError as exc:
            self._steps = None
            if dependency_of(exc) is not None:
                raise
            MAINTENANCE_FAILURES.labels(self._table).inc()
            log.exception("table maintenance failed; the next pass retries", extra={"table": self._table})
            return None
