"""Demo data for `make dev`: well-known credentials and a few notification types and users."""

from django.contrib.auth import get_user_model
from django.db import transaction

from notifications.models import ApiKey, Category, NotificationTemplate, NotificationType, Provider, Urgency

DEV_USERNAME = "admin"
DEV_PASSWORD = "admin-dev-only"  # noqa: S105 - public dev credential; bootstrap_dev refuses without DEBUG
DEV_API_KEY = "np_devkey00_development-only-key-do-not-use-in-production"

DEMO_TYPES = [
    (
        "order.shipped",
        "Order shipped",
        Category.TRANSACTIONAL,
        Urgency.NORMAL,
        ["email", "push", "inapp"],
        {"order_number": "1234", "carrier": "DHL"},
    ),
    (
        "auth.password_reset",
        "Password reset",
        Category.SECURITY,
        Urgency.URGENT,
        ["email"],
        {"reset_url": "https://example.com/reset/abc"},
    ),
    (
        "marketing.weekly_digest",
        "Weekly digest",
        Category.MARKETING,
        Urgency.BULK,
        ["email", "push"],
        {"headline": "This week"},
    ),
]


TEMPLATES = {
    "order.shipped": {
        "email": {
            "subject": "Your order {{ order_number }} has shipped",
            "body": "Good news: order {{ order_number }} is on its way with {{ carrier }}.",
            "html": "<p>Good news: order <b>{{ order_number }}</b> is on its way with {{ carrier }}.</p>",
        },
        "push": {"title": "Order shipped", "body": "Order {{ order_number }} is on its way"},
        "inapp": {"title": "Order shipped", "body": "Order {{ order_number }} is on its way with {{ carrier }}"},
    },
    "auth.password_reset": {
        "email": {"subject": "Reset your password", "body": "Reset it here: {{ reset_url }}"},
    },
    "marketing.weekly_digest": {
        "email": {"subject": "{{ headline }}", "body": "{{ headline }} — unsubscribe: {{ unsubscribe_url }}"},
        "push": {"title": "{{ headline }}", "body": "Your weekly digest is ready"},
    },
}

#: Provider contracts for the sandboxes (rates are the sandboxes' defaults; edit them in the admin).
DEV_PROVIDERS = [
    ("sendgrid", "email", "sendgrid", 100, 20, 1),
    ("smtp", "email", "smtp", 50, 10, 2),
    ("twilio", "sms", "twilio", 50, 10, 1),
    ("fcm", "push", "fcm", 200, 20, 1),
    ("apns", "push", "apns", 200, 20, 1),
    ("webhook", "webhook", "webhook", 100, 20, 1),
    ("inapp", "inapp", "inapp", 5000, 500, 1),
]


@transaction.atomic
def bootstrap_dev_data(*, demo_users: int = 20) -> str:
    User = get_user_model()
    admin_user, created = User.objects.get_or_create(
        username=DEV_USERNAME, defaults={"is_staff": True, "is_superuser": True, "email": "admin@example.com"}
    )
    if created:
        admin_user.set_password(DEV_PASSWORD)
        admin_user.save()
    prefix = DEV_API_KEY.split("_")[1]
    ApiKey.objects.get_or_create(
        prefix=prefix, defaults={"service": "demo", "key_hash": ApiKey.hash_secret(DEV_API_KEY)}
    )
    for key, name, category, urgency, channels, sample in DEMO_TYPES:
        NotificationType.objects.get_or_create(
            key=key,
            defaults={
                "name": name,
                "category": category,
                "urgency": urgency,
                "default_channels": channels,
                "sample_payload": sample,
            },
        )
    for key, channels in TEMPLATES.items():
        ntype = NotificationType.objects.get(key=key)
        for channel, fields in channels.items():
            NotificationTemplate.objects.get_or_create(
                notification_type=ntype, channel=channel, locale="", defaults=fields
            )
    for name, channel, kind, rate, burst, priority in DEV_PROVIDERS:
        Provider.objects.get_or_create(
            name=name, defaults={"channel": channel, "kind": kind, "rate": rate, "burst": burst, "priority": priority}
        )
    from preferences.models import Device, RecipientProfile

    for i in range(1, demo_users + 1):
        user, _ = User.objects.get_or_create(username=f"demo{i}", defaults={"email": f"demo{i}@example.com"})
        RecipientProfile.objects.get_or_create(
            user=user, defaults={"phone": f"+4915100000{i:03d}", "locale": "en", "timezone": "Europe/Berlin"}
        )
        Device.objects.get_or_create(platform="fcm", token=f"demo-fcm-token-{i}", defaults={"user": user})
    return (
        f"{NotificationType.objects.count()} notification types, {Provider.objects.count()} providers, "
        f"{User.objects.count()} users"
    )
