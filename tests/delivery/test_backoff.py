"""Unit and property tests for full-jitter backoff, tier choice and RetryPolicy.decide."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifications.delivery.backoff import (
    DEFAULT_TIERS,
    RetryAction,
    RetryPolicy,
    RetryTier,
    choose_tier,
    full_jitter_delay,
)


class FixedRandom(random.Random):
    """uniform(a, b) returns a + fraction * (b - a)."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + self.fraction * (b - a)


def test_full_jitter_uses_exponential_ceiling_capped() -> None:
    top = FixedRandom(1.0)
    assert [full_jitter_delay(i, base=0.5, cap=10.0, rng=top) for i in range(7)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
    ]
    assert full_jitter_delay(3, base=0.5, cap=10.0, rng=FixedRandom(0.0)) == 0.0
    assert full_jitter_delay(3, base=0.5, cap=10.0, rng=FixedRandom(0.25)) == 1.0


def test_retry_after_is_a_floor_even_above_cap() -> None:
    rng = FixedRandom(0.0)
    assert full_jitter_delay(0, base=1.0, cap=10.0, rng=rng, retry_after=3.0) == 3.0
    assert full_jitter_delay(0, base=1.0, cap=10.0, rng=rng, retry_after=120.0) == 120.0
    # A Retry-After below the jittered delay does not shorten it.
    assert full_jitter_delay(4, base=1.0, cap=10.0, rng=FixedRandom(0.5), retry_after=1.0) == 5.0


def test_huge_attempt_does_not_overflow() -> None:
    assert full_jitter_delay(10_000, base=1.0, cap=30.0, rng=FixedRandom(1.0)) == 30.0


def test_same_seed_same_delays() -> None:
    a = [full_jitter_delay(i, base=1, cap=60, rng=random.Random(7)) for i in range(10)]
    b = [full_jitter_delay(i, base=1, cap=60, rng=random.Random(7)) for i in range(10)]
    assert a == b


def test_full_jitter_is_spread_over_the_whole_range() -> None:
    rng = random.Random(1234)
    samples = [full_jitter_delay(5, base=1.0, cap=100.0, rng=rng) for _ in range(4000)]
    assert min(samples) < 1.0 and max(samples) > 31.0
    assert 15.0 < sum(samples) / len(samples) < 17.0  # mean of U(0, 32) is 16


@settings(max_examples=300, deadline=None)
@given(
    retry_index=st.integers(min_value=0, max_value=5000),
    base=st.floats(min_value=0, max_value=100, allow_nan=False),
    cap=st.floats(min_value=0, max_value=100_000, allow_nan=False),
    retry_after=st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_full_jitter_bounds(retry_index: int, base: float, cap: float, retry_after: float | None, seed: int) -> None:
    delay = full_jitter_delay(retry_index, base=base, cap=cap, rng=random.Random(seed), retry_after=retry_after)
    ceiling = min(cap, base * 2.0**retry_index) if retry_index < 1023 else cap
    assert delay >= 0.0
    assert delay >= (retry_after or 0.0)
    assert delay <= max(ceiling, retry_after or 0.0)


def test_full_jitter_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        full_jitter_delay(-1, base=1, cap=1)
    with pytest.raises(ValueError):
        full_jitter_delay(0, base=-1, cap=1)


@pytest.mark.parametrize(
    ("delay", "suffix"),
    [
        (0.0, "retry.5s"),
        (2.5, "retry.5s"),
        (5.0, "retry.5s"),
        (5.01, "retry.1m"),
        (60.0, "retry.1m"),
        (61.0, "retry.10m"),
        (600.0, "retry.10m"),
        (3600.0, "retry.10m"),
    ],
)
def test_choose_tier_rounds_up_and_saturates(delay: float, suffix: str) -> None:
    assert choose_tier(delay).suffix == suffix


def test_choose_tier_accepts_unsorted_custom_tiers() -> None:
    tiers = (RetryTier(30.0, "retry.30s"), RetryTier(1.0, "retry.1s"))
    assert choose_tier(0.5, tiers).suffix == "retry.1s"
    assert choose_tier(10.0, tiers).suffix == "retry.30s"
    with pytest.raises(ValueError):
        choose_tier(1.0, ())


NOW = 1_700_000_000.0


def test_decide_in_process_for_small_delays() -> None:
    policy = RetryPolicy(base=0.5, cap=600, in_process_threshold=2.0, rng=FixedRandom(1.0))
    decision = policy.decide(attempt=1, first_attempt_at=NOW, now=NOW + 1)
    assert decision.action is RetryAction.RETRY_IN_PROCESS
    assert decision.delay == 0.5  # first retry: ceiling = base
    assert decision.not_before == NOW + 1.5
    assert decision.tier is None


def test_decide_parks_longer_delays_in_a_tier_topic() -> None:
    policy = RetryPolicy(base=0.5, cap=600, in_process_threshold=2.0, rng=FixedRandom(1.0))
    decision = policy.decide(attempt=6, first_attempt_at=NOW, now=NOW + 100)
    assert decision.action is RetryAction.RETRY_LATER
    assert decision.delay == 16.0  # 0.5 * 2**5
    assert decision.tier is not None and decision.tier.suffix == "retry.1m"
    assert decision.not_before == NOW + 116.0


def test_decide_honours_retry_after() -> None:
    policy = RetryPolicy(base=0.5, in_process_threshold=2.0, rng=FixedRandom(0.0))
    decision = policy.decide(attempt=1, first_attempt_at=NOW, now=NOW, retry_after=30.0)
    assert decision.action is RetryAction.RETRY_LATER
    assert decision.delay == 30.0
    assert decision.tier == DEFAULT_TIERS[1]


def test_decide_gives_up_on_attempts_and_age() -> None:
    policy = RetryPolicy(max_attempts=3, max_age_seconds=3600, rng=FixedRandom(0.5))
    assert policy.decide(3, NOW, NOW + 1).reason == "max_attempts"
    assert policy.decide(2, NOW, NOW + 1).action is not RetryAction.GIVE_UP
    too_old = policy.decide(1, NOW, NOW + 3600)
    assert (too_old.action, too_old.reason) == (RetryAction.GIVE_UP, "max_age")
    # The next attempt would only start after the max age: give up now instead of parking it.
    late = policy.decide(1, NOW, NOW + 3000, retry_after=900)
    assert (late.action, late.reason) == (RetryAction.GIVE_UP, "max_age")


def test_decide_rejects_zero_attempt_and_bad_policy() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().decide(0, NOW, NOW)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


@settings(max_examples=300, deadline=None)
@given(
    attempt=st.integers(min_value=1, max_value=50),
    age=st.floats(min_value=0, max_value=200_000, allow_nan=False),
    retry_after=st.none() | st.floats(min_value=0, max_value=100_000, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_decide_properties(attempt: int, age: float, retry_after: float | None, seed: int) -> None:
    policy = RetryPolicy(max_attempts=10, max_age_seconds=86_400, base=0.5, cap=600, rng=random.Random(seed))
    d = policy.decide(attempt, NOW, NOW + age, retry_after)
    if attempt >= policy.max_attempts:
        assert (d.action, d.reason) == (RetryAction.GIVE_UP, "max_attempts")
        return
    if d.action is RetryAction.GIVE_UP:
        assert d.reason == "max_age"
        assert NOW + age + d.delay >= NOW + policy.max_age_seconds
        return
    assert d.delay >= (retry_after or 0.0)
    assert d.delay <= max(min(policy.cap, policy.base * 2 ** (attempt - 1)), retry_after or 0.0)
    assert d.not_before == NOW + age + d.delay
    assert d.not_before < NOW + policy.max_age_seconds
    if d.action is RetryAction.RETRY_IN_PROCESS:
        assert d.delay <= policy.in_process_threshold and d.tier is None
    else:
        assert d.delay > policy.in_process_threshold and d.tier is not None
        assert d.tier == choose_tier(d.delay)
