"""factory_boy factories for the preferences tests."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.utils import timezone

from preferences.models import Device, DevicePlatform, InboxMessage, PreferenceDocument, RecipientProfile


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    # Unusable password: no hashing (PBKDF2 would cost ~0.3 s per user); tests authenticate with force_authenticate.
    password = factory.LazyFunction(lambda: make_password(None))


class RecipientProfileFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = RecipientProfile

    user = factory.SubFactory(UserFactory)
    phone = "+4915112345678"
    locale = "de-CH"
    timezone = "Europe/Zurich"


class DeviceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Device

    user = factory.SubFactory(UserFactory)
    platform = DevicePlatform.FCM
    token = factory.Sequence(lambda n: f"fcm-token-{n:06d}")


class PreferenceDocumentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = PreferenceDocument

    user = factory.SubFactory(UserFactory)
    document = factory.LazyFunction(lambda: {"categories": {"marketing": {"email": False}}})
    version = 1


class InboxMessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = InboxMessage

    user = factory.SubFactory(UserFactory)
    notification_id = factory.Sequence(lambda n: f"notif-{n:06d}")
    type_key = "order.shipped"
    category = "transactional"
    title = factory.Sequence(lambda n: f"Message {n}")
    body = "Your order is on its way."
    data = factory.LazyFunction(dict)
    created_at = factory.LazyFunction(timezone.now)
