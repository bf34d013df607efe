"""Read-side queries of campaigns: the audience (``active users ∧ predicate``), one keyset page of it with
each channel's eligibility in the same query, and estimates. See docs/architecture.md, "Campaigns"
(Orchestrator, and its departures)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import BooleanField, Count, ExpressionWrapper, Q, QuerySet, Value
from django.db.models.expressions import RawSQL

from campaigns.models import Campaign
from campaigns.predicates import compile_predicate, contact_available_q, never_null
from notifications.models import MANDATORY_CATEGORIES
from preferences.models import Device
from preferences.selectors import ContactPoints, allowed_users_q


def audience_queryset(campaign: Campaign, *, now: dt.datetime | None = None, after_id: int = 0) -> QuerySet:
    """Active users matching the campaign's predicate (raises ValidationError for a bad predicate),
    with id > ``after_id``; for a fanout to a topic, its subscribers only, minus the excluded users.

    The topic is a join on its subscriptions' primary key ``(topic_id, user_id)``, the range given on
    that key too: a page is a range scan of the subscriptions, whatever the size of the user table."""
    users = get_user_model().objects.filter(is_active=True, pk__gt=after_id)
    if campaign.topic_id is not None:
        users = users.filter(topic_subscriptions__topic_id=campaign.topic_id, topic_subscriptions__user_id__gt=after_id)
    if campaign.exclude_user_ids:
        users = users.exclude(pk__in=list(campaign.exclude_user_ids))
    return users.filter(compile_predicate(campaign.audience, now=now))


def eligibility_q(campaign: Campaign, channel: str, *, joined: bool = False) -> Q:
    """Preferences allow the campaign's category on ``channel`` and a contact point exists.
    ``joined`` picks the join form of the preference rule (page queries, see module docstring)."""
    entry = campaign.notification_type
    rule = allowed_by_document_q if joined else allowed_users_q
    return rule(
        category=entry.category, channel=channel, type_default_channels=list(entry.default_channels or [])
    ) & contact_available_q(channel)


def allowed_by_document_q(*, category: str, channel: str, type_default_channels: Iterable[str]) -> Q:
    """:func:`preferences.selectors.allowed_users_q` (is_allowed as SQL) over a LEFT JOIN of the user's
    preference document instead of EXISTS subqueries; a missing document or key means "no entry"."""
    document = "preference_document__document"
    muted = never_null(Q(**{f"{document}__global_mute": True}))
    opted_in = never_null(Q(**{f"{document}__categories__{category}__{channel}": True}))
    opted_out = never_null(Q(**{f"{document}__categories__{category}__{channel}": False}))
    is_default = channel in set(type_default_channels)
    if category in MANDATORY_CATEGORIES:
        return Q() if is_default else opted_in
    if is_default:
        return ~muted & ~opted_out
    return opted_in & ~muted


def _flag(q: Q):
    if not q:  # Q() matches everyone (in-app; a mandatory default channel)
        return Value(True, output_field=BooleanField())
    return ExpressionWrapper(q, output_field=BooleanField())


@dataclass(frozen=True)
class AudiencePage:
    user_ids: list[int]  # every user of the page (predicate matched), ascending
    eligible: dict[str, list[int]]  # channel → eligible user ids, ascending

    @property
    def last_user_id(self) -> int:
        return self.user_ids[-1]


def audience_page(
    campaign: Campaign, *, channels: Sequence[str], after_id: int, limit: int, now: dt.datetime | None = None
) -> AudiencePage:
    """One keyset page of the audience (users with id > after_id), eligibility per channel, one query."""
    flags = {f"eligible_{channel}": _flag(eligibility_q(campaign, channel, joined=True)) for channel in channels}
    rows = list(
        audience_queryset(campaign, now=now, after_id=after_id)
        .annotate(**flags)
        .order_by("pk")
        .values_list("pk", *flags)[:limit]
    )
    eligible: dict[str, list[int]] = {channel: [] for channel in channels}
    for row in rows:
        for channel, ok in zip(channels, row[1:], strict=True):
            if ok:
                eligible[channel].append(row[0])
    return AudiencePage(user_ids=[row[0] for row in rows], eligible=eligible)


@dataclass(frozen=True)
class AudienceEstimate:
    matching: int
    eligible: dict[str, int]


def audience_estimate(campaign: Campaign, *, now: dt.datetime | None = None) -> AudienceEstimate:
    """How many users match the predicate, and how many of them each channel would reach (one query)."""
    channels = list(campaign.channels or [])
    aggregates = {"matching": Count("pk")}
    for channel in channels:
        q = eligibility_q(campaign, channel)
        aggregates[f"eligible_{channel}"] = Count("pk", filter=q) if q else Count("pk")
    result = audience_queryset(campaign, now=now).aggregate(**aggregates)
    return AudienceEstimate(
        matching=result["matching"], eligible={channel: result[f"eligible_{channel}"] for channel in channels}
    )


def audience_count(campaign: Campaign, *, now: dt.datetime | None = None) -> int:
    return audience_queryset(campaign, now=now).count()


@dataclass(frozen=True)
class BatchRecipient:
    contact: ContactPoints
    first_name: str
    attributes: dict


def batch_recipients(user_ids: Sequence[int]) -> dict[int, BatchRecipient]:
    """Contact points, first names and attributes of a batch's users in two queries, whatever its size.

    Same rules as :func:`preferences.selectors.contact_points_for_users` (checked by a test), but
    the ids travel as ONE array parameter: a 50k-id ``IN (%s, …)`` costs far more to build and
    parse than the query takes to run (docs/architecture.md, "Batch expansion")."""
    if not user_ids:
        return {}
    ids = RawSQL("SELECT unnest(%s::bigint[])", (list(user_ids),))
    user_model = get_user_model()
    email_field = user_model.get_email_field_name()
    devices: dict[int, list[tuple[str, str]]] = {}
    for user_id, platform, token in (
        Device.objects.filter(user_id__in=ids, active=True)
        .order_by("user_id", "id")
        .values_list("user_id", "platform", "token")
    ):
        devices.setdefault(user_id, []).append((platform, token))
    rows = user_model.objects.filter(pk__in=ids).values_list(
        "pk",
        email_field,
        "recipient_profile__phone",
        "recipient_profile__phone_invalid_at",
        "recipient_profile__email_invalid_at",
        "recipient_profile__email_invalid_address",
        "recipient_profile__webhook_url",
        "recipient_profile__webhook_invalid_at",
        "recipient_profile__locale",
        "recipient_profile__timezone",
        "first_name",
        "recipient_profile__attributes",
    )
    out: dict[int, BatchRecipient] = {}
    for (pk, email, phone, phone_invalid_at, email_invalid_at, email_invalid_address, webhook_url,
         webhook_invalid_at, locale, tz, first_name, attributes) in rows:  # fmt: skip
        email_ok = bool(email) and not (
            email_invalid_at is not None
            and (not email_invalid_address or email_invalid_address.lower() == email.lower())
        )
        contact = ContactPoints(
            user_id=pk,
            email=email if email_ok else None,
            phone=phone if phone and phone_invalid_at is None else None,
            devices=devices.get(pk, []),
            webhook_url=webhook_url if webhook_url and webhook_invalid_at is None else None,
            locale=locale or None,
            timezone=tz or None,
        )
        out[pk] = BatchRecipient(contact=contact, first_name=first_name or "", attributes=attributes or {})
    return out
