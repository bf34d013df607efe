"""Migration 0002 gives every existing user an external id: its internal id, so old addresses still work."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("preferences", "0001_initial")]
AFTER = [("preferences", "0002_recipient_external_id")]


def test_existing_users_get_their_internal_id_as_external_id():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    User = old.get_model("auth", "User")
    Profile = old.get_model("preferences", "RecipientProfile")
    with_profile = User.objects.create(username="with-profile")
    Profile.objects.create(user=with_profile, phone="+4915112345678")
    without_profile = User.objects.create(username="without-profile")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps
    Profile = new.get_model("preferences", "RecipientProfile")
    rows = dict(Profile.objects.values_list("user_id", "external_id"))
    assert rows == {with_profile.pk: str(with_profile.pk), without_profile.pk: str(without_profile.pk)}
    assert Profile.objects.get(user_id=with_profile.pk).phone == "+4915112345678"
