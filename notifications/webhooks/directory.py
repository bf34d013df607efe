"""The registered webhook endpoints as a sending process sees them: URL -> endpoint, re-read every few seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from standardwebhooks.webhooks import Webhook

from notifications.outages import dependency_of
from notifications.webhooks.secrets import SecretError, normalise_url, secret_key

log = logging.getLogger(__name__)

#: How often the table is re-read (an admin edit or a rotation goes live without a restart).
DEFAULT_REFRESH_SECONDS = 5.0


@dataclass(frozen=True)
class EndpointEntry:
    """One registered endpoint: its signers (newest secret first) and whether it may be sent to."""

    id: int
    active: bool
    signers: tuple[Webhook, ...]

    @property
    def scope(self) -> str:
        """Its back-pressure scope (see `EndpointBackoff`): the endpoint, whatever its URL's host."""
        return f"endpoint:{self.id}"

    def __repr__(self) -> str:
        return f"<EndpointEntry {self.id} active={self.active} signers={len(self.signers)}>"


class EndpointDirectory:
    """URL -> `EndpointEntry`, read from the `WebhookEndpoint` table on the caller's thread.

    `refresh_if_due` is sync (a worker calls it on its consumer thread, next to its provider table);
    `lookup` only reads the last table, so the event loop never touches the database."""

    def __init__(
        self, *, refresh_seconds: float = DEFAULT_REFRESH_SECONDS, clock: Callable[[], float] = time.monotonic
    ):
        self.refresh_seconds = refresh_seconds
        self._clock = clock
        self._by_url: dict[str, EndpointEntry] = {}
        self._loaded_at = float("-inf")
        self._loaded = False

    def lookup(self, url: str) -> EndpointEntry | None:
        if not self._by_url:
            return None
        return self._by_url.get(normalise_url(url))

    def expire(self) -> None:
        """The next `refresh_if_due` reads the table."""
        self._loaded_at = float("-inf")

    def refresh_if_due(self) -> None:
        if self._clock() - self._loaded_at < self.refresh_seconds:
            return
        try:
            self.refresh()
        except Exception as exc:
            if dependency_of(exc) != "postgresql" or not self._loaded:
                raise
            # The database is away: keep signing with the table read last (retried at the next refresh).
            self._loaded_at = self._clock()
            log.warning("webhook endpoints not refreshed", extra={"error": str(exc)[:200]})

    def refresh(self) -> None:
        from notifications.webhooks.models import WebhookEndpoint

        table = {}
        for pk, url, secrets, active in WebhookEndpoint.objects.values_list("pk", "url", "secrets", "active"):
            table[normalise_url(url)] = EndpointEntry(id=pk, active=active, signers=_signers(pk, secrets))
        self._by_url = table  # one reference swap: readers on other threads see the old or the new table
        self._loaded_at = self._clock()
        self._loaded = True


def _signers(pk: int, secrets: object) -> tuple[Webhook, ...]:
    """A signer per usable secret; an unusable one is logged (never its value) and left out."""
    signers = []
    for index, secret in enumerate(secrets if isinstance(secrets, list) else []):
        try:
            secret_key(str(secret))
            signers.append(Webhook(str(secret)))
        except SecretError as exc:
            log.error(
                "webhook endpoint secret unusable", extra={"endpoint": pk, "secret_index": index, "error": str(exc)}
            )
    return tuple(signers)


@cache
def endpoint_directory() -> EndpointDirectory:
    """The process's directory (workers refresh it; adapters read it)."""
    from django.conf import settings

    return EndpointDirectory(refresh_seconds=settings.WEBHOOK_ENDPOINT_REFRESH_SECONDS)
