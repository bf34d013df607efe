"""The join form of the preference rule used by page queries agrees with preferences.selectors.allowed_users_q."""

import itertools

import pytest
from django.contrib.auth import get_user_model

from campaigns.selectors import allowed_by_document_q
from preferences.selectors import allowed_users_q
from tests.campaigns.conftest import copy_users

pytestmark = pytest.mark.django_db

DOCUMENTS = [
    None,
    {},
    {"global_mute": True},
    {"global_mute": False},
    {"categories": {"marketing": {"email": False}}},
    {"categories": {"marketing": {"email": True}}},
    {"categories": {"marketing": {"sms": True}}, "global_mute": True},
    {"categories": {"security": {"email": False, "sms": True}}},
    {"categories": {"marketing": {"email": True, "sms": False}, "product": {"email": False}}},
]


def test_allowed_by_document_q_matches_allowed_users_q():
    ids = copy_users(len(DOCUMENTS), document=lambda i: DOCUMENTS[i])
    users = get_user_model().objects.filter(pk__in=ids)
    for category, channel, defaults in itertools.product(
        ("marketing", "security", "product"), ("email", "sms"), ([], ["email"], ["email", "sms"])
    ):
        rule = {"category": category, "channel": channel, "type_default_channels": defaults}
        expected = set(users.filter(allowed_users_q(**rule)).values_list("pk", flat=True))
        joined = set(users.filter(allowed_by_document_q(**rule)).values_list("pk", flat=True))
        assert joined == expected, rule


def test_batch_recipients_match_contact_points_for_users():
    from django.utils import timezone

    from campaigns.selectors import batch_recipients
    from preferences.models import Device, RecipientProfile
    from preferences.selectors import contact_points_for_users

    ids = copy_users(
        8,
        email=lambda i: i != 1,
        phone=lambda i: "+4915112345678" if i % 2 else "",
        device=lambda i: "fcm" if i % 3 == 0 else None,
        locale=lambda i: "de-ch" if i == 2 else "",
        attributes=lambda i: {"n": i},
    )
    now = timezone.now()
    RecipientProfile.objects.filter(user_id=ids[3]).update(email_invalid_at=now, email_invalid_address="")
    RecipientProfile.objects.filter(user_id=ids[4]).update(email_invalid_at=now, email_invalid_address="old@x.com")
    RecipientProfile.objects.filter(user_id=ids[5]).update(phone_invalid_at=now, webhook_url="https://h.example/x")
    RecipientProfile.objects.filter(user_id=ids[6]).update(webhook_url="https://h.example/y", webhook_invalid_at=now)
    Device.objects.create(user_id=ids[0], platform="apns", token="a" * 64)
    Device.objects.filter(user_id=ids[3]).update(active=False)
    expected = contact_points_for_users([*ids, 10**12])
    loaded = batch_recipients([*ids, 10**12])
    assert {uid: r.contact for uid, r in loaded.items()} == expected
    assert loaded[ids[5]].attributes == {"n": 5} and loaded[ids[5]].first_name == "First5"
