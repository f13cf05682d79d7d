"""The dispatcher's and the timer's idle waits: until the next row comes due, capped by the
poll."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cartback.worker import TIMER_RECHECK_SECONDS, idle_wait, timer_wait

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_nothing_pending_waits_the_whole_poll() -> None:
    assert idle_wait(None, NOW, 0.5) == 0.5


def test_a_row_due_sooner_than_the_poll_is_waited_for_exactly() -> None:
    assert idle_wait(NOW + timedelta(milliseconds=120), NOW, 0.5) == 0.12


def test_a_row_due_later_than_the_poll_waits_only_the_poll() -> None:
    assert idle_wait(NOW + timedelta(seconds=30), NOW, 0.5) == 0.5


def test_rows_due_but_not_taken_wait_the_poll_rather_than_spin() -> None:
    """Rows due now that the run did not take (a rate's grant, another worker's lock)."""
    assert idle_wait(NOW - timedelta(seconds=1), NOW, 0.5) == 0.5
    assert idle_wait(NOW, NOW, 0.5) == 0.5


def test_the_timer_sleeps_until_the_next_wake_capped_by_the_poll() -> None:
    assert timer_wait(NOW + timedelta(milliseconds=80), NOW, 0.5) == 0.08
    assert timer_wait(NOW + timedelta(minutes=5), NOW, 0.5) == 0.5
    assert timer_wait(None, NOW, 0.5) == 0.5


def test_the_timer_looks_again_soon_at_a_wake_already_past() -> None:
    """Come due since the claim's clock, or held by another worker: not a whole poll late."""
    assert timer_wait(NOW - timedelta(milliseconds=3), NOW, 0.5) == TIMER_RECHECK_SECONDS
    assert timer_wait(NOW, NOW, 0.01) == 0.01
