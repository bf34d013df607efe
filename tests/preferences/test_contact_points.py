"""Contact points for the dispatcher (constant queries, invalid points skipped) and their invalidation."""

from __future__ import annotations

import pytest
from django.utils import timezone

from preferences.models import Device
from preferences.selectors import ContactPoints, contact_points_for_users
from preferences.services import contact_point_invalidate, profile_update

from .factories import DeviceFactory, RecipientProfileFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_contact_points_skip_invalid_points_and_inactive_devices(django_assert_num_queries):
    full = RecipientProfileFactory(webhook_url="https://hooks.example.com/x")
    DeviceFactory(user=full.user, platform="fcm", token="live-1")
    DeviceFactory(user=full.user, platform="apns", token="b" * 64)
    DeviceFactory(user=full.user, token="dead-1", active=False)
    invalid = RecipientProfileFactory(
        email_invalid_at=timezone.now(),
        phone_invalid_at=timezone.now(),
        webhook_url="https://hooks.example.com/y",
        webhook_invalid_at=timezone.now(),
    )
    bare = UserFactory(email="")  # no profile, no email
    ids = [full.user_id, invalid.user_id, bare.pk, 987654]

    with django_assert_num_queries(1):
        points = contact_points_for_users(ids)

    assert set(points) == {full.user_id, invalid.user_id, bare.pk}  # unknown ids are absent
    assert points[full.user_id] == ContactPoints(
        user_id=full.user_id,
        email=full.user.email,
        phone="+4915112345678",
        devices=[("fcm", "live-1"), ("apns", "b" * 64)],
        webhook_url="https://hooks.example.com/x",
        locale="de-CH",
        timezone="Europe/Zurich",
    )
    assert points[invalid.user_id] == ContactPoints(user_id=invalid.user_id, locale="de-CH", timezone="Europe/Zurich")
    assert points[bare.pk] == ContactPoints(user_id=bare.pk)


def test_query_count_does_not_grow_with_the_batch(django_assert_num_queries):
    profiles = RecipientProfileFactory.create_batch(30)
    for profile in profiles:
        DeviceFactory(user=profile.user)
    with django_assert_num_queries(1):
        points = contact_points_for_users([p.user_id for p in profiles])
    assert len(points) == 30 and all(len(p.devices) == 1 for p in points.values())
    assert contact_points_for_users([]) == {}


def test_invalidate_email_only_for_the_address_that_bounced():
    user = UserFactory(email="old@example.com")
    assert not contact_point_invalidate(user_id=user.pk, channel="email", address="other@example.com", reason="bounce")
    assert contact_point_invalidate(user_id=user.pk, channel="email", address="OLD@example.com", reason="hard bounce")
    assert not contact_point_invalidate(user_id=user.pk, channel="email", reason="again")  # already invalid
    assert contact_points_for_users([user.pk])[user.pk].email is None
    user.email = "new@example.com"  # the user fixed their address: valid again
    user.save()
    assert contact_points_for_users([user.pk])[user.pk].email == "new@example.com"


def test_invalidate_sms_push_and_webhook():
    profile = RecipientProfileFactory(webhook_url="https://hooks.example.com/z")
    user = profile.user
    device = DeviceFactory(user=user, token="gone-token")
    assert contact_point_invalidate(user_id=user.pk, channel="sms", address="+4915112345678", reason="unreachable")
    assert contact_point_invalidate(user_id=user.pk, channel="push", address="gone-token", reason="Unregistered")
    assert contact_point_invalidate(user_id=user.pk, channel="webhook", reason="410 Gone")
    assert not contact_point_invalidate(user_id=user.pk, channel="push", address="gone-token", reason="again")
    device.refresh_from_db()
    assert not device.active and device.deactivation_reason == "Unregistered" and device.deactivated_at
    assert contact_points_for_users([user.pk])[user.pk] == ContactPoints(
        user_id=user.pk, email=user.email, locale="de-CH", timezone="Europe/Zurich"
    )
    profile.refresh_from_db()
    assert profile.phone_invalid_reason == "unreachable" and profile.webhook_invalid_reason == "410 Gone"
    # A new phone number is valid again.
    profile_update(user=user, phone="+41791234567")
    assert contact_points_for_users([user.pk])[user.pk].phone == "+41791234567"
    with pytest.raises(ValueError, match="no contact point"):
        contact_point_invalidate(user_id=user.pk, channel="inapp", reason="x")
    with pytest.raises(ValueError, match="token"):
        contact_point_invalidate(user_id=user.pk, channel="push", reason="x")
    assert not contact_point_invalidate(user_id=424242, channel="email", reason="no such user")


def test_device_limit_deactivates_the_least_recently_seen(settings):
    from preferences.services import device_register

    settings.PREFERENCES_MAX_DEVICES_PER_USER = 2
    user = UserFactory()
    first = device_register(user=user, platform="fcm", token="t1")
    device_register(user=user, platform="fcm", token="t2")
    device_register(user=user, platform="fcm", token="t3")
    assert sorted(Device.objects.filter(user=user, active=True).values_list("token", flat=True)) == ["t2", "t3"]
    first.refresh_from_db()
    assert first.deactivation_reason == "device limit reached"
