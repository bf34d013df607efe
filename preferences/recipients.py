"""Reading and erasing one recipient by the producer's external id (the identify API's GET and DELETE).

Erasure removes the person: the user row and with it (cascades) the profile, devices, preference
document and in-app inbox; their pending quiet-hours messages; their cached preferences. Delivery-log
rows stay for the statistics but are pseudonymised: their user id becomes a random negative number
that no table maps to anyone. Events already accepted for the id find nobody at dispatch.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from notifications.models import DeliveryLog, ScheduledMessage

from .cache import cache_delete
from .identify import ProtectedRecipient, protected_recipients
from .models import Device, RecipientProfile
from .recipient_ids import resolve_recipients

__all__ = ["recipient_erase", "recipient_get", "recipient_user"]

log = logging.getLogger(__name__)


def recipient_user(external_id: str) -> Any | None:
    """The user an external id names, or None."""
    user_id = resolve_recipients([external_id]).get(external_id)
    if user_id is None:
        return None
    return get_user_model().objects.filter(pk=user_id).first()


def recipient_get(external_id: str) -> dict[str, Any] | None:
    """The recipient as the API shows it (``RecipientOutSerializer``), or None if nobody has the id."""
    user = recipient_user(external_id)
    if user is None:
        return None
    profile = RecipientProfile.objects.filter(user=user).first() or RecipientProfile(user=user)
    email = user.email or ""
    email_invalid = profile.email_invalid_at is not None and profile.email_invalid_address.lower() in (
        "",
        email.lower(),
    )
    devices = Device.objects.filter(user=user, active=True).order_by("id").values("platform", "token")
    return {
        "id": external_id,
        "email": email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "phone": profile.phone,
        "locale": profile.locale,
        "timezone": profile.timezone,
        "webhook_url": profile.webhook_url,
        "attributes": profile.attributes or {},
        "devices": list(devices),
        "email_valid": bool(email) and not email_invalid,
        "phone_valid": bool(profile.phone) and profile.phone_invalid_at is None,
        "created_at": profile.created_at,
        "updated_at": profile.updated_at,
    }


def recipient_erase(*, external_id: str) -> bool:
    """Erase the recipient ``external_id`` names; False if nobody has it. Raises
    :class:`ProtectedRecipient` for a staff account (never erased through the API)."""
    user_id = resolve_recipients([external_id]).get(external_id)
    if user_id is None:
        return False
    if protected_recipients({external_id: user_id}):
        raise ProtectedRecipient([external_id])
    pseudonym = -secrets.randbelow(2**62) - 1
    with transaction.atomic():
        user = get_user_model().objects.select_for_update().filter(pk=user_id).first()
        if user is None:
            return False  # erased meanwhile
        scheduled = ScheduledMessage.objects.filter(key=str(user_id), payload__user_id=user_id).delete()[0]
        logged = DeliveryLog.objects.filter(user_id=user_id).update(user_id=pseudonym)
        user.delete()
        transaction.on_commit(lambda: cache_delete(user_id))
    log.info("recipient erased", extra={"scheduled_deleted": scheduled, "log_rows_pseudonymised": logged})
    return True
