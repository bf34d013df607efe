"""A registered webhook endpoint: its URL, its own signing secrets (newest first), on or off."""

from django.db import models


class WebhookEndpoint(models.Model):
    """Messages whose webhook URL equals `url` (`secrets.normalise_url`) are signed with this
    endpoint's `secrets` instead of `WEBHOOK_SIGNING_SECRET`, and back off as one endpoint.

    `secrets` is never shown (the admin takes a new one write-only and lists fingerprints): every
    secret in it signs each message, so a receiver verifies with the old or the new one during a
    rotation, until the old one is retired."""

    url = models.URLField(max_length=2000, unique=True, help_text="Compared with the recipients' webhook URLs.")
    description = models.CharField(max_length=200, blank=True)
    secrets = models.JSONField(default=list, blank=True, editable=False)
    active = models.BooleanField(
        default=True, help_text="Off: messages to this URL are not sent (they go to the DLQ, replayable)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("url",)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"<WebhookEndpoint {self.pk} {self.url!r} secrets={len(self.secrets or [])} active={self.active}>"
