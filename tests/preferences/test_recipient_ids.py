"""External recipient ids: the format, the one-query resolution, the fallback to the internal id,
the admin, and what producers can address with them (publish, ingest, campaign predicates)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaigns.predicates import compile_predicate
from notifications import publish
from notifications.models import NotificationType, OutboxEvent
from preferences.models import RecipientProfile, validate_external_id
from preferences.recipient_ids import external_ids_of, resolve_recipients

from .factories import RecipientProfileFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("value", ["u-42", "42", "ana@example.com", "ü" * 255, "a:b|c"])
def test_valid_external_ids(value):
    validate_external_id(value)


@pytest.mark.parametrize("value", ["", " x", "a b", "a/b", "a?b", "a#b", "tab\tx", "x" * 256, "nul\x00"])
def test_invalid_external_ids_are_refused(value):
    with pytest.raises(ValidationError):
        validate_external_id(value)


def test_a_batch_resolves_in_one_query_and_external_ids_win_over_internal_ids():
    named = RecipientProfileFactory(external_id="u-1").user
    plain = UserFactory()  # no profile: addressed by its internal id
    unnamed = RecipientProfileFactory().user  # a profile without an external id: the same
    shadowed = UserFactory()
    shadowing = RecipientProfileFactory(external_id=str(shadowed.pk)).user
    with CaptureQueriesContext(connection) as queries:
        resolved = resolve_recipients(
            ["u-1", str(plain.pk), str(unnamed.pk), str(shadowed.pk), "nobody", str(named.pk), f"0{plain.pk}"]
        )
    assert len(queries) == 1
    assert resolved == {
        "u-1": named.pk,
        str(plain.pk): plain.pk,
        str(unnamed.pk): unnamed.pk,
        str(shadowed.pk): shadowing.pk,  # the external id, not the user with that internal id
    }  # "nobody", a named user's internal id and a non-canonical number name nobody


def test_external_ids_of_gives_what_producers_use():
    named = RecipientProfileFactory(external_id="u-2").user
    plain = UserFactory()
    assert external_ids_of([named.pk, plain.pk]) == {named.pk: "u-2", plain.pk: str(plain.pk)}


def test_publish_takes_external_ids_and_refuses_malformed_ones():
    NotificationType.objects.create(key="order.shipped", name="Shipped")
    publish(type="order.shipped", recipients=["u-42", 7], event_id="e-ext")
    assert sorted(OutboxEvent.objects.values_list("key", flat=True)) == ["7", "u-42"]
    with pytest.raises(ValueError, match="recipients: 'a b'"):
        publish(type="order.shipped", recipients=["a b"], event_id="e-bad")


def test_campaign_predicates_match_on_the_external_id():
    a = RecipientProfileFactory(external_id="vip-1").user
    b = RecipientProfileFactory(external_id="std-1").user
    q = compile_predicate({"field": "recipient.id", "op": "startswith", "value": "vip-"})
    assert set(type(a).objects.filter(pk__in=[a.pk, b.pk]).filter(q).values_list("pk", flat=True)) == {a.pk}


def test_the_admin_finds_a_recipient_by_external_id(admin_client):
    profile = RecipientProfileFactory(external_id="find-me-1")
    RecipientProfileFactory(external_id="other-1")
    response = admin_client.get("/admin/preferences/recipientprofile/", {"q": "find-me-1"})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [profile]


def test_duplicate_external_ids_are_refused_by_the_model():
    RecipientProfileFactory(external_id="dup")
    with pytest.raises(ValidationError) as error:
        RecipientProfile(user=UserFactory(), external_id="dup").full_clean()
    assert "external_id" in error.value.message_dict
