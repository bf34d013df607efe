"""Signal handlers: a deleted preference document (admin, user deletion cascade) leaves the cache."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .cache import cache_delete
from .models import PreferenceDocument


@receiver(post_delete, sender=PreferenceDocument, dispatch_uid="preferences.document_deleted")
def _document_deleted(sender: type[PreferenceDocument], instance: PreferenceDocument, **kwargs: Any) -> None:
    user_id = instance.user_id
    transaction.on_commit(lambda: cache_delete(user_id))
