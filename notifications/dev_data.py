"""Demo data for `make dev`: well-known credentials and a few notification types and users."""

from django.contrib.auth import get_user_model
from django.db import transaction

from notifications.models import ApiKey, Category, NotificationType, Urgency

DEV_USERNAME = "admin"
DEV_PASSWORD = "admin-dev-only"
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
    for i in range(1, demo_users + 1):
        User.objects.get_or_create(username=f"demo{i}", defaults={"email": f"demo{i}@example.com"})
    return f"{NotificationType.objects.count()} notification types, {User.objects.count()} users"
