"""Backoff with deterministic jitter: bounds, growth, the cap, and the same wait every time."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cartback.services.retry import RetryPolicy, jitter_fraction


def test_each_wait_lies_between_half_and_all_of_the_doubled_backoff() -> None:
    policy = RetryPolicy()
    for attempt, ceiling in [(1, 30), (2, 60), (3, 120), (4, 240), (8, 3600), (30, 3600)]:
        assert policy.ceiling(attempt) == timedelta(seconds=ceiling)
        for outbox_id in range(200):
            wait = policy.backoff(outbox_id, attempt)
            assert timedelta(seconds=ceiling / 2) <= wait <= timedelta(seconds=ceiling)


def test_the_jitter_is_the_same_for_the_same_row_and_attempt_and_spreads_across_rows() -> None:
    policy = RetryPolicy()
    assert policy.backoff(42, 3) == policy.backoff(42, 3)
    assert jitter_fraction(42, 3) == jitter_fraction(42, 3)
    waits = {policy.backoff(outbox_id, 1) for outbox_id in range(100)}
    assert len(waits) > 90  # a burst refused together does not come back together
    fractions = [jitter_fraction(outbox_id, 1) for outbox_id in range(1000)]
    assert 0 <= min(fractions) < 0.05 and 0.95 < max(fractions) < 1


def test_no_jitter_waits_exactly_the_doubled_backoff() -> None:
    policy = RetryPolicy(jitter=0, base=timedelta(seconds=1), cap=timedelta(seconds=5))
    assert [policy.backoff(7, n).total_seconds() for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_it_gives_up_after_the_configured_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.gives_up(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)
