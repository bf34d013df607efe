"""Frequency caps: atomic in Redis, refusals do not use up the budget, windows expire."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest

from preferences.frequency import CapRequest, frequency_cap_take, frequency_cap_take_many, window_bounds

NOW = dt.datetime(2025, 6, 11, 15, 20, tzinfo=dt.UTC)  # a Wednesday


def take(client, caps, *, user_id=1, channel="email", now=NOW):
    return frequency_cap_take(client, user_id=user_id, category="marketing", channel=channel, caps=caps, now=now)


def test_n_plus_one_takes_grant_n(redis_client):
    caps = {"email": {"max": 3, "per": "day"}}
    results = [take(redis_client, caps) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    refused = results[-1]
    assert (refused.limited_by, refused.per) == ("email", "day")
    assert refused.reset_at == dt.datetime(2025, 6, 12, tzinfo=dt.UTC)
    # Another user and another window are separate budgets.
    assert take(redis_client, caps, user_id=2).allowed
    assert take(redis_client, caps, now=NOW + dt.timedelta(days=1)).allowed


def test_concurrent_takes_never_exceed_the_cap(redis_client):
    caps = {"push": {"max": 10, "per": "hour"}}
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: take(redis_client, caps, channel="push"), range(40)))
    assert sum(r.allowed for r in results) == 10


def test_category_wide_cap_counts_all_channels_and_refusals_cost_nothing(redis_client, redis_prefix):
    caps = {"*": {"max": 2, "per": "week"}, "email": {"max": 5, "per": "day"}}
    assert take(redis_client, caps, channel="email").allowed
    assert take(redis_client, caps, channel="push").allowed  # no push cap, but "*" applies
    refused = take(redis_client, caps, channel="email")
    assert not refused.allowed and refused.limited_by == "*" and refused.per == "week"
    assert refused.reset_at == dt.datetime(2025, 6, 16, tzinfo=dt.UTC)  # next Monday 00:00 UTC
    start, _end = window_bounds("day", NOW)
    email_key = f"{redis_prefix}fcap:{{1}}:marketing:email:day:{start}"
    assert int(redis_client.get(email_key)) == 1  # the refused take did not increment the email counter
    assert redis_client.ttl(email_key) > 0


def test_max_zero_blocks_and_no_caps_touch_nothing(redis_client, redis_prefix):
    assert not take(redis_client, {"email": {"max": 0, "per": "hour"}}).allowed
    assert take(redis_client, {}).allowed
    assert take(redis_client, {"sms": {"max": 0, "per": "hour"}}).allowed  # another channel's cap
    assert not list(redis_client.scan_iter(match=f"{redis_prefix}*"))


def test_take_many_applies_requests_in_order_in_one_round_trip(redis_client):
    caps = {"email": {"max": 2, "per": "day"}}
    requests = [CapRequest(user_id=7, category="marketing", channel="email", caps=caps) for _ in range(3)]
    requests.append(CapRequest(user_id=8, category="marketing", channel="email", caps=caps))
    requests.append(CapRequest(user_id=9, category="marketing", channel="email", caps={}))
    decisions = frequency_cap_take_many(redis_client, requests, now=NOW)
    assert [d.allowed for d in decisions] == [True, True, False, True, True]


def test_redis_down_fails_open_or_raises_on_request(dead_redis):
    caps = {"email": {"max": 1, "per": "day"}}
    decision = take(dead_redis, caps)
    assert decision.allowed and decision.fail_open
    with pytest.raises(Exception, match=r"Connection|connect"):
        frequency_cap_take(
            dead_redis, user_id=1, category="marketing", channel="email", caps=caps, now=NOW, fail_open=False
        )


def test_window_bounds():
    assert window_bounds("hour", NOW) == (
        int(dt.datetime(2025, 6, 11, 15, tzinfo=dt.UTC).timestamp()),
        int(dt.datetime(2025, 6, 11, 16, tzinfo=dt.UTC).timestamp()),
    )
    start, end = window_bounds("week", NOW)
    assert dt.datetime.fromtimestamp(start, dt.UTC) == dt.datetime(2025, 6, 9, tzinfo=dt.UTC)  # Monday
    assert end - start == 7 * 86400
