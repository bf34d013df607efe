"""Unit tests of the sandbox building blocks (no sockets): limiter, recorder, faults, config."""

from __future__ import annotations

import random

import pytest

from provider_sandbox.config import ConfigError, ErrorRates, LatencyConfig, ProviderConfig, SandboxConfig
from provider_sandbox.faults import BAD_REQUEST, INVALID_TOKEN, THROTTLED, TRANSIENT, FaultInjector
from provider_sandbox.ratelimit import SlidingWindowLimiter
from provider_sandbox.recorder import Recorder, max_in_window

pytestmark: list[pytest.MarkDecorator] = []


def test_limiter_admits_rate_per_sliding_second() -> None:
    limiter = SlidingWindowLimiter(rate=3)
    t0 = 1000.0
    assert [limiter.try_acquire(t0 + i * 0.1) for i in range(3)] == [None, None, None]
    retry = limiter.try_acquire(t0 + 0.5)
    assert retry == pytest.approx(0.5)  # the first admission leaves the window at t0 + 1.0
    assert limiter.try_acquire(t0 + 0.999) is not None
    assert limiter.try_acquire(t0 + 1.0) is None  # exactly one window later: slot free again
    assert limiter.snapshot(t0 + 1.0).remaining == 0


def test_limiter_burst_and_unlimited() -> None:
    limiter = SlidingWindowLimiter(rate=10, burst=2)  # 2 per 200 ms
    assert limiter.window == pytest.approx(0.2)
    assert limiter.try_acquire(0.0) is None
    assert limiter.try_acquire(0.01) is None
    assert limiter.try_acquire(0.02) == pytest.approx(0.18)
    unlimited = SlidingWindowLimiter(rate=None)
    assert all(unlimited.try_acquire(0.0) is None for _ in range(10_000))
    assert unlimited.snapshot().limit is None


def test_limiter_never_exceeds_rate_in_any_window_matching_stats() -> None:
    rng = random.Random(3)
    limiter = SlidingWindowLimiter(rate=7)
    t, admitted = 50.0, []
    for _ in range(5000):
        t += rng.expovariate(40)
        if limiter.try_acquire(t) is None:
            admitted.append(t)
    assert max_in_window(admitted, 1.0)[0] == 7


def test_max_in_window_half_open() -> None:
    assert max_in_window([], 1.0) == (0, None)
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0)[0] == 3
    assert max_in_window([5.0, 1.0, 1.2, 5.1, 5.2, 5.3], 1.0) == (4, 5.0)


def test_recorder_duplicates_and_eviction() -> None:
    rec = Recorder("x", maxlen=3)
    for key in ("a", "b", "a", "a"):
        rec.add(t_mono=0.0, t_wall=0.0, recipients=["r"], keys=[key])
    # "a" #1 was evicted: 2 x "a" + 1 x "b" remain
    assert rec.evicted == 1
    assert rec.duplicates()["keys"] == 1
    assert rec.duplicates()["extra_requests"] == 1
    assert [r.seq for r in rec.since(2)] == [3, 4]
    assert [r.seq for r in rec.since(0, limit=1)] == [2]
    rec.reset()
    assert rec.duplicates() == {"keys": 0, "extra_requests": 0, "sample": []}


def test_fault_markers() -> None:
    faults = FaultInjector(random.Random(1))
    none = ErrorRates()
    assert faults.decide(["user-invalid@example.com"], none).kind == BAD_REQUEST
    assert faults.decide(["tok-unregistered-1"], none).kind == INVALID_TOKEN
    assert faults.decide(["+15005550001"], none).kind == BAD_REQUEST
    assert faults.decide(["+15005550004"], none).kind == INVALID_TOKEN
    kinds = [getattr(faults.decide(["a-fail5xx-2@x.io"], none), "kind", None) for _ in range(4)]
    assert kinds == [TRANSIENT, TRANSIENT, None, None]
    assert faults.decide(["b-fail500-1"], none).status == 500
    assert [getattr(faults.decide(["+15005559100"], none), "kind", None) for _ in range(2)] == [THROTTLED, None]
    assert [getattr(faults.decide(["+15005555200"], none), "status", None) for _ in range(3)] == [503, 503, None]
    assert faults.extra_latency(["slow-250@x", "slow-40@y"]) == 0.25
    assert faults.decide(["ok@example.com", "+15551234567"], none) is None


def test_random_error_rates_are_seeded_probabilities() -> None:
    faults = FaultInjector(random.Random(42))
    rates = ErrorRates(transient=0.2, bad_request=0.1, invalid_token=0.1)
    outcomes = [faults.decide(["ok"], rates) for _ in range(20_000)]
    share = {
        kind: sum(1 for f in outcomes if f and f.kind == kind) / len(outcomes)
        for kind in (TRANSIENT, BAD_REQUEST, INVALID_TOKEN)
    }
    assert share[TRANSIENT] == pytest.approx(0.2, abs=0.02)
    assert share[BAD_REQUEST] == pytest.approx(0.1, abs=0.02)
    assert share[INVALID_TOKEN] == pytest.approx(0.1, abs=0.02)
    assert {f.status for f in outcomes if f and f.kind == TRANSIENT} == {500, 503}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, {"kind": "none"}),
        (15, {"kind": "fixed", "ms": 15.0}),
        ("fixed:5", {"kind": "fixed", "ms": 5.0}),
        ("5..20", {"kind": "uniform", "min_ms": 5.0, "max_ms": 20.0}),
        ("uniform:5:20", {"kind": "uniform", "min_ms": 5.0, "max_ms": 20.0}),
        ("normal:50:10", {"kind": "normal", "mean_ms": 50.0, "stddev_ms": 10.0}),
        ({"kind": "normal", "mean_ms": 1, "stddev_ms": 2}, {"kind": "normal", "mean_ms": 1.0, "stddev_ms": 2.0}),
    ],
)
def test_latency_specs(spec: object, expected: dict[str, object]) -> None:
    assert LatencyConfig.parse(spec).to_dict() == expected


def test_latency_samples_within_bounds() -> None:
    rng = random.Random(0)
    uniform = LatencyConfig.parse("uniform:10:20")
    assert all(0.010 <= uniform.sample(rng) <= 0.020 for _ in range(1000))
    normal = LatencyConfig.parse("normal:5:50")
    assert min(normal.sample(rng) for _ in range(1000)) == 0.0  # clipped, never negative


def test_provider_config_update_is_validated_and_atomic() -> None:
    cfg = ProviderConfig(name="sendgrid", port=0)
    cfg.update({"rate": 100, "latency": "uniform:1:2", "errors": {"transient": 0.5}, "options": {"api_keys": ["k"]}})
    assert (cfg.rate, cfg.latency.kind, cfg.errors.transient, cfg.options["api_keys"]) == (100, "uniform", 0.5, ["k"])
    for bad in (
        {"nope": 1},
        {"errors": {"transient": 0.7, "bad_request": 0.7}},
        {"latency": "weird:1"},
        {"options": {"unknown": 1}},
        {"rate": -1},
    ):
        with pytest.raises(ConfigError):
            cfg.update({"rate": 5, **bad})
    assert cfg.rate == 100  # nothing applied by the failed updates
    cfg.update({"rate": None})
    assert cfg.rate is None


def test_sandbox_config_default_subset() -> None:
    cfg = SandboxConfig.default(only=["twilio", "smtp"])
    assert list(cfg.providers) == ["twilio", "smtp"]
    assert cfg.providers["twilio"].port == 18102
    with pytest.raises(ConfigError):
        SandboxConfig.default(only=["pigeon"])
