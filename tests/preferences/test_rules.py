"""`is_allowed` truth table and `quiet_hours_end` (midnight crossing, time zones, DST)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from preferences.rules import is_allowed, quiet_hours_end
from preferences.state import PreferenceState

DEFAULTS = ("email", "push")


def state(**document) -> PreferenceState:
    return PreferenceState(user_id=1, version=1, document=document)


@pytest.mark.parametrize(
    ("document", "category", "channel", "expected"),
    [
        # no document: the type's default channels only
        ({}, "marketing", "email", (True, "default")),
        ({}, "marketing", "sms", (False, "not_default_channel")),
        # explicit opt-out / opt-in
        ({"categories": {"marketing": {"email": False}}}, "marketing", "email", (False, "opted_out")),
        ({"categories": {"marketing": {"email": False}}}, "marketing", "push", (True, "default")),
        ({"categories": {"marketing": {"sms": True}}}, "marketing", "sms", (True, "opted_in")),
        ({"categories": {"product": {"email": False}}}, "marketing", "email", (True, "default")),
        # global mute beats opt-ins
        ({"global_mute": True}, "marketing", "email", (False, "global_mute")),
        ({"global_mute": True, "categories": {"social": {"sms": True}}}, "social", "sms", (False, "global_mute")),
        ({"global_mute": False}, "transactional", "push", (True, "default")),
        # security overrides opt-outs and global mute, but not the channel defaults
        ({"categories": {"security": {"email": False}}}, "security", "email", (True, "mandatory")),
        ({"global_mute": True}, "security", "push", (True, "mandatory")),
        ({"global_mute": True, "categories": {"security": {"sms": True}}}, "security", "sms", (True, "opted_in")),
        ({"global_mute": True}, "security", "sms", (False, "not_default_channel")),
    ],
)
def test_is_allowed_truth_table(document, category, channel, expected):
    assert is_allowed(state(**document), category=category, channel=channel, type_default_channels=DEFAULTS) == expected


BERLIN_NIGHT = {"enabled": True, "start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}
BERLIN = ZoneInfo("Europe/Berlin")


def at(year, month, day, hour, minute=0, tz=BERLIN) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=tz)


@pytest.mark.parametrize(
    ("now", "expected_end"),
    [
        (at(2025, 1, 15, 21, 59), None),  # just before the window
        (at(2025, 1, 15, 22, 0), at(2025, 1, 16, 7, 0)),  # start is inclusive, ends tomorrow morning
        (at(2025, 1, 15, 23, 30), at(2025, 1, 16, 7, 0)),
        (at(2025, 1, 16, 3, 0), at(2025, 1, 16, 7, 0)),  # after midnight, ends this morning
        (at(2025, 1, 16, 7, 0), None),  # end is exclusive
        (at(2025, 1, 16, 12, 0), None),
    ],
)
def test_quiet_hours_across_midnight_in_berlin(now, expected_end):
    end = quiet_hours_end(state(quiet_hours=BERLIN_NIGHT), now.astimezone(dt.UTC))
    assert end == expected_end
    if end is not None:
        assert end.tzinfo is not None and end.utcoffset() == dt.timedelta(0)


def test_quiet_hours_use_the_users_timezone_not_utc():
    # 21:30 UTC in January is 22:30 in Berlin: inside the user's window although UTC says 21:30.
    now = dt.datetime(2025, 1, 15, 21, 30, tzinfo=dt.UTC)
    assert quiet_hours_end(state(quiet_hours=BERLIN_NIGHT), now) == dt.datetime(2025, 1, 16, 6, 0, tzinfo=dt.UTC)
    tokyo = {**BERLIN_NIGHT, "timezone": "Asia/Tokyo"}  # 06:30 in Tokyo: still quiet until 07:00
    assert quiet_hours_end(state(quiet_hours=tokyo), now) == dt.datetime(2025, 1, 15, 22, 0, tzinfo=dt.UTC)


def test_quiet_hours_over_a_dst_change_end_at_local_wall_time():
    # Night of 29/30 March 2025: Berlin springs forward at 02:00 (UTC+1 -> UTC+2).
    now = dt.datetime(2025, 3, 29, 23, 0, tzinfo=dt.UTC)  # 00:00 CET
    assert quiet_hours_end(state(quiet_hours=BERLIN_NIGHT), now) == dt.datetime(2025, 3, 30, 5, 0, tzinfo=dt.UTC)
    # Night of 25/26 October 2025: falls back at 03:00 (UTC+2 -> UTC+1).
    now = dt.datetime(2025, 10, 25, 21, 0, tzinfo=dt.UTC)  # 23:00 CEST
    assert quiet_hours_end(state(quiet_hours=BERLIN_NIGHT), now) == dt.datetime(2025, 10, 26, 6, 0, tzinfo=dt.UTC)


def test_same_day_window_and_disabled_or_missing_quiet_hours():
    lunch = {"enabled": True, "start": "12:00", "end": "13:30", "timezone": "UTC"}
    assert quiet_hours_end(state(quiet_hours=lunch), dt.datetime(2025, 1, 1, 12, 10, tzinfo=dt.UTC)) == dt.datetime(
        2025, 1, 1, 13, 30, tzinfo=dt.UTC
    )
    assert quiet_hours_end(state(quiet_hours=lunch), dt.datetime(2025, 1, 1, 11, 0, tzinfo=dt.UTC)) is None
    now = dt.datetime(2025, 1, 15, 23, 0, tzinfo=dt.UTC)
    assert quiet_hours_end(state(quiet_hours={**BERLIN_NIGHT, "enabled": False}), now) is None
    assert quiet_hours_end(state(quiet_hours=None), now) is None
    assert quiet_hours_end(state(), now) is None
    with pytest.raises(ValueError, match="aware"):
        quiet_hours_end(state(quiet_hours=BERLIN_NIGHT), dt.datetime(2025, 1, 1))


@pytest.mark.django_db
def test_allowed_users_q_matches_is_allowed():
    from django.contrib.auth import get_user_model

    from preferences.selectors import allowed_users_q

    from .factories import PreferenceDocumentFactory, UserFactory

    documents = [
        None,
        {},
        {"global_mute": True},
        {"global_mute": False, "categories": {"marketing": {"email": False, "sms": True}}},
        {"global_mute": True, "categories": {"security": {"sms": True}, "marketing": {"sms": True}}},
        {"categories": {"marketing": {"push": True, "email": True}, "security": {"email": False}}},
    ]
    users = []
    for document in documents:
        users.append(UserFactory() if document is None else PreferenceDocumentFactory(document=document).user)
    ids = [u.pk for u in users]
    for category in ("marketing", "security"):
        for channel in ("email", "push", "sms"):
            q = allowed_users_q(category=category, channel=channel, type_default_channels=DEFAULTS)
            in_sql = set(get_user_model().objects.filter(q, pk__in=ids).values_list("pk", flat=True))
            expected = {
                user.pk
                for user, document in zip(users, documents, strict=True)
                if is_allowed(
                    state(**(document or {})), category=category, channel=channel, type_default_channels=DEFAULTS
                )[0]
            }
            assert in_sql == expected, (category, channel)
