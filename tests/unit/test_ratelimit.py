"""The dispatcher's token bucket, on a clock the test controls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cartback.services.ratelimit import TokenBucket

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_a_full_bucket_allows_one_seconds_worth_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(10)
    assert bucket.available(T0) == 10
    bucket.take(10)
    assert bucket.available(T0) == 0
    assert bucket.available(T0 + timedelta(milliseconds=350)) == 3
    assert bucket.available(T0 + timedelta(seconds=5)) == 10  # never more than the burst


def test_a_rate_below_one_a_second_still_sends_one_at_a_time() -> None:
    bucket = TokenBucket(0.5)
    assert bucket.available(T0) == 1
    bucket.take(1)
    assert bucket.available(T0 + timedelta(seconds=1)) == 0
    assert bucket.available(T0 + timedelta(seconds=2)) == 1


def test_a_clock_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(5)
    bucket.available(T0)
    bucket.take(5)
    assert bucket.available(T0 - timedelta(seconds=10)) == 0
    assert bucket.available(T0 + timedelta(seconds=1)) == 5


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)


@given(
    rate=st.floats(0.1, 1000),
    gaps=st.lists(st.integers(0, 5000), min_size=1, max_size=40),
)
def test_never_more_than_the_rate_allows_over_any_run(rate: float, gaps: list[int]) -> None:
    bucket = TokenBucket(rate)
    now, sent = T0, 0
    for gap in gaps:
        now += timedelta(milliseconds=gap)
        granted = bucket.available(now)
        bucket.take(granted)
        sent += granted
    elapsed = (now - T0).total_seconds()
    assert sent <= max(1.0, rate) + rate * elapsed + 1e-6
