"""Unit tests for the in-process circuit breaker with an injected clock."""

from __future__ import annotations

import pytest

from notifications.delivery.circuit_breaker import BreakerState, CircuitBreaker, CircuitOpenError


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(clock: FakeClock, **kwargs: object) -> CircuitBreaker:
    params: dict[str, object] = {
        "failure_threshold": 3,
        "failure_rate_threshold": 0.5,
        "window_seconds": 10.0,
        "min_calls": 10,
        "cool_down_seconds": 5.0,
    }
    params.update(kwargs)
    return CircuitBreaker("test", clock=clock, **params)  # type: ignore[arg-type]


def test_opens_after_consecutive_failures_and_success_resets_the_streak() -> None:
    clock = FakeClock()
    breaker = make(clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow_request()
    assert breaker.retry_in() == pytest.approx(5.0)


def test_opens_on_failure_rate_over_the_window() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=100)
    for _ in range(4):
        breaker.record_success()
        breaker.record_failure()
        clock.advance(0.1)
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED  # 9 calls < min_calls
    breaker.record_failure()  # 10 calls, 5 failures = 50 %
    assert breaker.state is BreakerState.OPEN


def test_old_outcomes_slide_out_of_the_window() -> None:
    clock = FakeClock()
    breaker = make(clock, failure_threshold=100)
    for _ in range(9):
        breaker.record_failure()
    clock.advance(10.5)  # all nine failures are now outside the 10 s window
    for _ in range(9):
        breaker.record_success()
    breaker.record_failure()  # 1 failure in 10 calls
    assert breaker.state is BreakerState.CLOSED


def test_half_open_admits_one_probe_and_success_closes() -> None:
    clock = FakeClock()
    changes: list[tuple[str, BreakerState, BreakerState]] = []
    breaker = make(clock, on_state_change=lambda *c: changes.append(c))
    for _ in range(3):
        breaker.record_failure()
    clock.advance(4.9)
    assert not breaker.allow_request()
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow_request()  # the probe
    assert not breaker.allow_request()  # only one probe at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow_request()
    assert changes == [
        ("test", BreakerState.CLOSED, BreakerState.OPEN),
        ("test", BreakerState.OPEN, BreakerState.HALF_OPEN),
        ("test", BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_failed_probe_reopens_for_a_fresh_cool_down() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow_request()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(4.0)
    assert not breaker.allow_request()
    clock.advance(1.0)
    assert breaker.allow_request()


def test_a_probe_that_never_reports_does_not_wedge_the_circuit() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow_request()  # probe lost (caller crashed)
    clock.advance(1.0)
    assert not breaker.allow_request()
    clock.advance(5.0)
    assert breaker.allow_request()


def test_call_wraps_the_protocol() -> None:
    clock = FakeClock()
    breaker = make(clock)
    assert breaker.call(lambda x: x * 2, 21) == 42

    def boom() -> None:
        raise ConnectionError("down")

    for _ in range(3):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    calls: list[int] = []
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: calls.append(1))
    assert calls == []
    assert info.value.retry_in == pytest.approx(5.0)


def test_reset_and_validation() -> None:
    clock = FakeClock()
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    breaker.reset()
    assert breaker.state is BreakerState.CLOSED
    with pytest.raises(ValueError):
        CircuitBreaker("x", failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker("x", failure_rate_threshold=0.0)
