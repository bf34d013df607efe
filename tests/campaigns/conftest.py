"""Campaign test fixtures: a marketing type, campaigns with copy, users loaded with COPY, providers, the
platform with its sandboxes opened wide."""

import uuid
from datetime import UTC, datetime

import orjson
import pytest
from django.contrib.auth.models import Group
from django.db import connection

from notifications.models import Category, NotificationType, Provider, Urgency


@pytest.fixture
def promo_type(db):
    return NotificationType.objects.create(
        key="marketing.promo",
        name="Promotion",
        category=Category.MARKETING,
        urgency=Urgency.BULK,
        default_channels=["email", "push", "inapp"],
    )


def make_campaign(
    notification_type, *, channels=("email",), audience=None, throttle=None, name="Spring sale", copies=None, **fields
):
    from campaigns.models import Campaign, CampaignCopy

    campaign = Campaign.objects.create(
        name=name,
        notification_type=notification_type,
        channels=list(channels),
        audience=audience if audience is not None else {"all": []},
        throttle=throttle,
        **fields,
    )
    default_copies = {
        "email": {
            "subject": "Spring sale, {{ user.first_name }}",
            "body": "20% off. {{ unsubscribe_url }}",
            "html": "<p>20% off</p>",
        },
        "push": {"title": "Spring sale", "body": "20% off today"},
        "inapp": {"title": "Spring sale", "body": "20% off today"},
        "sms": {"body": "Spring sale: 20% off"},
        "webhook": {"payload": ""},
    }
    for channel in channels:
        CampaignCopy.objects.create(campaign=campaign, channel=channel, locale="", **default_copies[channel])
    for (channel, locale), text in (copies or {}).items():
        CampaignCopy.objects.create(campaign=campaign, channel=channel, locale=locale, **text)
    return campaign


@pytest.fixture
def marketer(db, django_user_model):
    user = django_user_model.objects.create_user("marketer", "marketer@example.com", "pw-marketer-1", is_staff=True)
    user.groups.add(Group.objects.get(name="Marketing"))
    return user


@pytest.fixture
def editor(db, django_user_model):
    user = django_user_model.objects.create_user("editor", "editor@example.com", "pw-editor-1", is_staff=True)
    user.groups.add(Group.objects.get(name="Marketing editors"))
    return user


def copy_users(
    n: int, *, attributes=None, locale=None, document=None, device=None, email=True, phone=None, tag: str | None = None
) -> list[int]:
    """COPY `n` users with profiles (and optionally devices / preference documents). The keyword
    arguments are callables of the index i (or constants) deciding each user's data."""
    tag = tag or uuid.uuid4().hex[:6]
    now = datetime.now(UTC)

    def pick(spec, i, default=None):
        if callable(spec):
            return spec(i)
        return default if spec is None else spec

    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence('auth_user', 'id')) FROM generate_series(1, %s)", [n])
        ids = [row[0] for row in cursor.fetchall()]
        with cursor.copy(
            "COPY auth_user (id, password, is_superuser, username, first_name, last_name, email, is_staff,"
            " is_active, date_joined) FROM STDIN"
        ) as copy:
            for i, uid in enumerate(ids):
                address = f"u{i}.{tag}@example.com" if pick(email, i, True) else ""
                copy.write_row((uid, "!", False, f"{tag}-{i}", f"First{i}", "", address, False, True, now))
        with cursor.copy(
            "COPY preferences_recipientprofile (user_id, phone, locale, timezone, attributes, webhook_url,"
            " email_invalid_address, email_invalid_reason, phone_invalid_reason, webhook_invalid_reason,"
            " created_at, updated_at) FROM STDIN"
        ) as copy:
            for i, uid in enumerate(ids):
                copy.write_row(
                    (
                        uid,
                        pick(phone, i, "") or "",
                        pick(locale, i, "en") or "",
                        "UTC",
                        orjson.dumps(pick(attributes, i, {}) or {}).decode(),
                        "",
                        "",
                        "",
                        "",
                        "",
                        now,
                        now,
                    )
                )
        with cursor.copy(
            "COPY preferences_device (user_id, platform, token, active, created_at, last_seen_at, deactivation_reason)"
            " FROM STDIN"
        ) as copy:
            for i, uid in enumerate(ids):
                platform = pick(device, i)
                if platform:
                    copy.write_row((uid, platform, f"{tag}-{uid}-{platform}".ljust(64, "0"), True, now, now, ""))
        with cursor.copy(
            "COPY preferences_preferencedocument (user_id, document, version, updated_at) FROM STDIN"
        ) as copy:
            for i, uid in enumerate(ids):
                doc = pick(document, i)
                if doc is not None:
                    copy.write_row((uid, orjson.dumps(doc).decode(), 1, now))
        cursor.execute("ANALYZE auth_user")
    return ids


@pytest.fixture
def fast_providers(db):
    rows = [
        Provider(name="sendgrid", channel="email", kind="sendgrid", rate=5000, burst=500, priority=1),
        Provider(name="fcm", channel="push", kind="fcm", rate=5000, burst=500),
        Provider(name="apns", channel="push", kind="apns", rate=5000, burst=500),
        Provider(name="twilio", channel="sms", kind="twilio", rate=5000, burst=500),
        Provider(name="inapp", channel="inapp", kind="inapp", rate=20000, burst=2000),
        Provider(name="webhook", channel="webhook", kind="webhook", rate=5000, burst=500),
    ]
    Provider.objects.bulk_create(rows)
    return {r.name: r for r in rows}


@pytest.fixture
def platform(platform, sandbox):
    """The shared platform fixture, with the campaign sandboxes opened wide (the Provider rows pace)."""
    for name in ("sendgrid", "fcm", "apns"):
        sandbox.client(name).reset(config=True)
        sandbox.client(name).configure(rate=20000, burst=20000)
    return platform


#: Provider rows at campaign rates, by name (SendGrid keeps a transactional reserve).
CAMPAIGN_PROVIDERS = {
    "sendgrid": {"channel": "email", "kind": "sendgrid", "rate": 6000, "burst": 600, "transactional_reserve": 50},
    "fcm": {"channel": "push", "kind": "fcm", "rate": 6000, "burst": 600},
    "apns": {"channel": "push", "kind": "apns", "rate": 6000, "burst": 600},
    "inapp": {"channel": "inapp", "kind": "inapp", "rate": 20000, "burst": 2000},
}


def create_providers(*names: str) -> None:
    Provider.objects.bulk_create([Provider(name=name, **CAMPAIGN_PROVIDERS[name]) for name in names])


@pytest.fixture
def providers(db):
    """SendGrid, FCM and APNs at campaign rates."""
    create_providers("sendgrid", "fcm", "apns")
