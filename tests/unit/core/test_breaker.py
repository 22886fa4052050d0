import pytest

from chiefofstate.core.breaker import OPEN_MESSAGE, BreakerSettings, BreakerState, CircuitBreaker
from chiefofstate.core.errors import Code, Internal


def breaker() -> CircuitBreaker:
    return CircuitBreaker(BreakerSettings(max_failures=3, call_timeout_s=1.0, reset_timeout_s=10.0))


def fail(b: CircuitBreaker, now: float) -> None:
    b.before_call(now)
    b.record(succeeded=False, duration_s=0.01, now=now)


def test_opens_after_max_consecutive_failures_and_fails_fast_with_internal() -> None:
    b = breaker()
    for _ in range(3):
        fail(b, 0.0)
    assert b.state is BreakerState.OPEN
    with pytest.raises(Internal, match=OPEN_MESSAGE) as caught:
        b.before_call(5.0)
    assert caught.value.code is Code.INTERNAL


def test_a_success_resets_the_consecutive_count() -> None:
    b = breaker()
    fail(b, 0.0)
    fail(b, 0.0)
    b.before_call(0.0)
    b.record(succeeded=True, duration_s=0.01, now=0.0)
    fail(b, 0.0)
    assert b.state is BreakerState.CLOSED


def test_after_the_reset_timeout_one_trial_goes_through_and_its_success_closes() -> None:
    b = breaker()
    for _ in range(3):
        fail(b, 0.0)
    b.before_call(10.5)
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(Internal):
        b.before_call(10.6)  # only one trial at a time
    b.record(succeeded=True, duration_s=0.01, now=10.7)
    assert b.state is BreakerState.CLOSED
    b.before_call(10.8)


def test_a_failed_trial_reopens_for_another_reset_period() -> None:
    b = breaker()
    for _ in range(3):
        fail(b, 0.0)
    fail(b, 11.0)
    assert b.state is BreakerState.OPEN
    with pytest.raises(Internal):
        b.before_call(20.0)
    b.before_call(21.5)


def test_a_slow_success_counts_as_a_failure() -> None:
    b = breaker()
    for _ in range(3):
        b.before_call(0.0)
        b.record(succeeded=True, duration_s=2.0, now=0.0)
    assert b.state is BreakerState.OPEN
