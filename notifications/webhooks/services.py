"""Writes to registered webhook endpoints: register or change one, rotate and retire its secrets."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction

from notifications.webhooks.models import WebhookEndpoint
from notifications.webhooks.secrets import SecretError, normalise_url, secret_key

#: Secrets one endpoint signs with at most (a rotation needs two; more is a forgotten cleanup).
MAX_SECRETS = 3


def webhook_endpoint_save(
    *,
    endpoint: WebhookEndpoint | None = None,
    url: str,
    description: str = "",
    active: bool = True,
    new_secret: str = "",
    keep_previous_secrets: bool = True,
) -> WebhookEndpoint:
    """Register an endpoint (`endpoint` None) or change one. `new_secret` (``whsec_<base64>``), if
    given, becomes the newest signing secret; the previous ones keep signing alongside it (a
    rotation) unless `keep_previous_secrets` is false. A new endpoint needs a secret.

    Raises `ValidationError` keyed by field; its messages never contain the secret."""
    errors: dict[str, list[str]] = {}
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        errors["url"] = ["Enter an http(s) URL."]
    try:
        webhook_endpoint_check_secret(endpoint=endpoint, new_secret=new_secret)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    with transaction.atomic():
        if endpoint is None:
            endpoint = WebhookEndpoint()
        else:
            endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        endpoint.url = normalise_url(url)
        endpoint.description = description
        endpoint.active = active
        if new_secret:
            previous = [s for s in (endpoint.secrets or []) if s != new_secret] if keep_previous_secrets else []
            endpoint.secrets = [new_secret, *previous][:MAX_SECRETS]
        if WebhookEndpoint.objects.filter(url=endpoint.url).exclude(pk=endpoint.pk).exists():
            raise ValidationError({"url": ["Another endpoint has this URL."]})
        endpoint.save()
    return endpoint


def webhook_endpoint_check_secret(*, endpoint: WebhookEndpoint | None, new_secret: str) -> None:
    """`ValidationError` on ``new_secret`` when it is malformed, or missing for an endpoint without one."""
    if new_secret:
        try:
            secret_key(new_secret)
        except SecretError as exc:
            raise ValidationError({"new_secret": [str(exc)]}) from None
    elif endpoint is None or not endpoint.secrets:
        raise ValidationError({"new_secret": ["An endpoint needs a signing secret (whsec_<base64>)."]})


def webhook_endpoint_retire_previous_secrets(*, endpoint: WebhookEndpoint) -> int:
    """End a rotation: only the newest secret signs from now on. Returns how many were retired."""
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        retired = max(0, len(locked.secrets or []) - 1)
        if retired:
            locked.secrets = locked.secrets[:1]
            locked.save(update_fields=["secrets", "updated_at"])
    return retired
