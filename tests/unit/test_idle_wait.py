"""The dispatcher's idle wait: until the next pending row comes due, capped by the poll."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cartback.worker import idle_wait

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
