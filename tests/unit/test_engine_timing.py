"""When steps run: the grace after which a step is late, one message per wake, and the offsets
later steps keep from the last message (core.engine, pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cartback.core.engine import (
    MAX_GRACE,
    Defer,
    GateResult,
    Outcome,
    advance,
    due_at,
    grace_for,
)
from cartback.core.flows import MIN_GRACE, Flow, Step, parse_flow
from cartback.core.model import (
    Cart,
    CartLine,
    CartStatus,
    Contact,
    Enrollment,
    EnrollmentState,
    StepOutcome,
)

ABANDONED = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

FLOW = parse_flow(
    """\
name: t
abandon_after: 10m
steps:
  - {id: a, at: 15m, channel: sms, body: one}
  - {id: b, at: 1h, channel: email, subject: s, body: two}
  - {id: c, at: 24h, channel: email, subject: s, body: three}
  - {id: d, at: 24h, channel: sms, body: four}
  - {id: e, at: 72h, channel: email, subject: s, body: five}
""",
    "t.yaml",
)
CART = Cart(
    1,
    1,
    "tok",
    7,
    (CartLine("Boots", 1, Decimal("120")),),
    Decimal("120"),
    "NOK",
    None,
    CartStatus.OPEN,
    ABANDONED,
)
CONTACT = Contact(id=7, store_id=1, phone="+4791234567", email="a@example.com")


def enrollment(
    step_index: int = 0,
    wake_at: datetime | None = None,
    history: dict[str, StepOutcome] | None = None,
) -> Enrollment:
    return Enrollment(
        id=1,
        store_id=1,
        cart_id=1,
        flow_name="t",
        flow_version=FLOW.version,
        step_index=step_index,
        state=EnrollmentState.ACTIVE,
        abandoned_at=ABANDONED,
        wake_at=wake_at if wake_at is not None else ABANDONED + FLOW.steps[step_index].at,
        history=history or {},
    )


def at(offset: timedelta) -> datetime:
    return ABANDONED + offset


def outcomes(flow: Flow, state: Enrollment, now: datetime) -> list[tuple[str | None, str]]:
    result = advance(flow, state, CART, CONTACT, now)
    return [(d.step_id, str(d.outcome)) for d in result.decisions]


# ---- grace ------------------------------------------------------------------------------------


def test_default_grace_is_the_gap_to_the_next_later_step_capped_at_six_hours() -> None:
    assert grace_for(FLOW, 0) == timedelta(minutes=45)
    assert grace_for(FLOW, 1) == MAX_GRACE == timedelta(hours=6)
    # c and d share an offset: the gap is counted to the next step with a later one.
    assert grace_for(FLOW, 2) == MAX_GRACE
    assert grace_for(FLOW, 3) == MAX_GRACE
    # The last step has no next step: six hours.
    assert grace_for(FLOW, 4) == MAX_GRACE


def test_a_tiny_gap_still_leaves_the_timer_a_minute() -> None:
    flow = parse_flow(
        "name: t\nabandon_after: 1m\nsteps:\n"
        "  - {id: a, at: 10m, channel: sms, body: one}\n"
        "  - {id: b, at: 10m10s, channel: sms, body: two}\n",
        "t.yaml",
    )
    assert grace_for(flow, 0) == MIN_GRACE


def test_a_flow_sets_its_own_grace() -> None:
    flow = parse_flow(
        "grace: 30m\n" + "name: t\nabandon_after: 1m\nsteps:\n"
        "  - {id: a, at: 10m, channel: sms, body: one}\n",
        "t.yaml",
    )
    assert flow.grace == timedelta(minutes=30)
    assert grace_for(flow, 0) == timedelta(minutes=30)


def test_a_step_within_its_grace_is_sent() -> None:
    now = at(timedelta(minutes=15) + timedelta(minutes=45))
    assert outcomes(FLOW, enrollment(), now) == [("a", "send")]


def test_a_step_past_its_grace_is_skipped_as_late_with_its_reason() -> None:
    now = at(timedelta(minutes=15) + timedelta(minutes=45, seconds=1))
    result = advance(FLOW, enrollment(), CART, CONTACT, now)
    late = result.decisions[0]
    assert (late.step_id, late.outcome, late.rule) == ("a", Outcome.SKIP, "timer.late")
    assert "due 2026-03-02 12:15:00 UTC" in late.reason and "45m grace" in late.reason
    # The next step was not late: it goes out in the same wake, alone.
    assert [(d.step_id, str(d.outcome)) for d in result.decisions[1:]] == [("b", "send")]
    assert result.enrollment.history["a"] == StepOutcome(skipped=True)


def test_after_three_days_down_only_the_step_within_grace_runs() -> None:
    now = at(timedelta(hours=73))
    assert outcomes(FLOW, enrollment(), now) == [
        ("a", "skip"),
        ("b", "skip"),
        ("c", "skip"),
        ("d", "skip"),
        ("e", "send"),
        (None, "complete"),
    ]


def test_a_deferred_step_is_due_when_its_deferral_ends_not_at_its_offset() -> None:
    # Held by quiet hours until 08:00 the next morning: due at 08:00, not at 12:15.
    morning = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    held = enrollment(wake_at=morning)
    assert outcomes(FLOW, held, morning + timedelta(minutes=30)) == [("a", "send")]
    late = advance(FLOW, held, CART, CONTACT, morning + timedelta(minutes=46))
    assert late.decisions[0].rule == "timer.late"
    assert "due 2026-03-03 08:00:00 UTC" in late.decisions[0].reason


def test_a_deferral_holds_its_step_and_the_timer_wakes_for_the_next_one() -> None:
    until = at(timedelta(hours=3))

    def quiet(_step: Step, _planned: tuple[Step, ...]) -> GateResult:
        return Defer(until, "quiet_hours", "quiet hours")

    result = advance(FLOW, enrollment(), CART, CONTACT, at(timedelta(minutes=15)), gate=quiet)
    assert [str(d.outcome) for d in result.decisions] == ["defer"]
    # a keeps its own hold; b (on another channel) is due at its own 1h.
    assert result.enrollment.holds == {"a": until}
    assert result.enrollment.step_index == 1
    assert result.enrollment.wake_at == at(timedelta(hours=1))


# ---- one message per wake, offsets from the last message --------------------------------------


def test_two_due_steps_never_go_out_in_the_same_wake() -> None:
    # Both a and b are due and within grace: only a goes out now.
    now = at(timedelta(hours=1))
    result = advance(FLOW, enrollment(), CART, CONTACT, now)
    assert [(d.step_id, str(d.outcome)) for d in result.decisions] == [("a", "send")]
    assert [step.id for step in result.sends] == ["a"]
    # b keeps its 45 minutes after a, which went out 45 minutes late.
    assert result.enrollment.step_index == 1
    assert result.enrollment.wake_at == now + timedelta(minutes=45)
    assert result.enrollment.history["a"].queued_at == now


def test_a_step_on_time_keeps_its_offset_from_abandonment() -> None:
    sent = at(timedelta(minutes=15))
    result = advance(FLOW, enrollment(), CART, CONTACT, sent)
    assert result.enrollment.wake_at == at(timedelta(hours=1))


def test_steps_at_the_same_offset_are_spaced_by_the_flow_spacing() -> None:
    now = at(timedelta(hours=24))
    state = enrollment(
        step_index=2, history={"a": StepOutcome(sent=True, queued_at=at(timedelta(minutes=15)))}
    )
    first = advance(FLOW, state, CART, CONTACT, now)
    assert [step.id for step in first.sends] == ["c"]
    assert first.enrollment.wake_at == now
    second = advance(FLOW, first.enrollment, CART, CONTACT, now + timedelta(seconds=2))
    assert second.sends == ()
    [spaced] = second.decisions
    assert (spaced.step_id, spaced.outcome, spaced.rule) == ("d", Outcome.DEFER, "flow.spacing")
    assert "spaced 30m after c" in spaced.reason
    assert second.enrollment.holds == {"d": now + timedelta(minutes=30)}
    third = advance(FLOW, second.enrollment, CART, CONTACT, now + timedelta(minutes=30))
    assert [step.id for step in third.sends] == ["d"]
    # e keeps its 48h from c, which went on its turn, not from d, which was spaced.
    assert third.enrollment.wake_at == at(timedelta(hours=72))


def test_due_at_counts_from_the_last_queued_message_when_that_is_later() -> None:
    queued = at(timedelta(hours=30))  # c went out six hours late
    history = {
        "a": StepOutcome(sent=True, queued_at=at(timedelta(minutes=15))),
        "b": StepOutcome(skipped=True),
        "c": StepOutcome(sent=True, queued_at=queued),
    }
    state = enrollment(step_index=3, history=history)
    assert due_at(FLOW, state, history, 3) == queued
    assert due_at(FLOW, state, history, 4) == queued + timedelta(hours=48)
    # Without a late message, the offsets from abandonment stand.
    on_time = {"a": StepOutcome(sent=True, queued_at=at(timedelta(minutes=15)))}
    assert due_at(FLOW, state, on_time, 4) == at(timedelta(hours=72))


def test_a_step_is_not_due_before_its_offset_from_the_last_message() -> None:
    history = {"a": StepOutcome(sent=True, queued_at=at(timedelta(minutes=50)))}
    # b is planned at 1h but a went out 35 minutes late: b waits until 1h35m.
    state = enrollment(step_index=1, wake_at=at(timedelta(minutes=95)), history=history)
    assert outcomes(FLOW, state, at(timedelta(minutes=94))) == []
    assert outcomes(FLOW, state, at(timedelta(minutes=95))) == [("b", "send")]


@pytest.mark.parametrize("hours", [1, 5, 30, 71, 80])
def test_one_advance_never_queues_two_messages(hours: int) -> None:
    result = advance(FLOW, enrollment(), CART, CONTACT, at(timedelta(hours=hours)))
    assert len(result.sends) <= 1
