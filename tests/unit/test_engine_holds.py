"""Steps keep their own time (core.engine, pure): a step one channel's rule defers is held on
its own, the steps after it on other channels go at their time, what must keep its order waits,
and messages brought together by a hold are spaced."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from cartback.core.engine import (
    ORDER_RULE,
    READS_RULE,
    SPACING_RULE,
    Allow,
    Defer,
    GateResult,
    Outcome,
    SendGate,
    StepDecision,
    advance,
    hold_step,
)
from cartback.core.flows import DEFAULT_SPACING, Flow, FlowError, Step, parse_flow
from cartback.core.model import (
    Cart,
    CartLine,
    CartStatus,
    Channel,
    Contact,
    Enrollment,
    EnrollmentState,
    StepOutcome,
)

EASTERN = ZoneInfo("America/New_York")
# Monday 23 November 2026, 20:30 in Baltimore: the cart counts as abandoned.
ABANDONED = datetime(2026, 11, 23, 20, 30, tzinfo=EASTERN).astimezone(UTC)

DEFAULT_LIKE = parse_flow(
    """\
name: t
abandon_after: 10m
steps:
  - {id: sms1, at: 15m, channel: sms, body: one}
  - {id: email1, at: 1h, channel: email, subject: s, body: two}
  - {id: sms2, at: 8h, channel: sms, when: not email1.opened, body: three}
  - {id: email2, at: 21h, channel: email, subject: s, body: four}
  - {id: sms3, at: 24h, channel: sms, when: not email2.clicked, body: five}
  - {id: email3, at: 72h, channel: email, subject: s, body: six}
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
    "USD",
    None,
    CartStatus.OPEN,
    ABANDONED,
)
CONTACT = Contact(id=7, store_id=1, phone="+14105550123", email="a@example.com")


def start(flow: Flow) -> Enrollment:
    return Enrollment(
        id=1,
        store_id=1,
        cart_id=1,
        flow_name=flow.name,
        flow_version=flow.version,
        step_index=0,
        state=EnrollmentState.ACTIVE,
        abandoned_at=ABANDONED,
        wake_at=ABANDONED + flow.steps[0].at,
    )


def local(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=EASTERN).astimezone(UTC)


def sms_window(now: datetime) -> SendGate:
    """Texts only from 08:00 to 20:00 Eastern (as Maryland's rule); email at any hour."""

    def gate(step: Step, _planned: tuple[Step, ...]) -> GateResult:
        clock = now.astimezone(EASTERN)
        if step.channel is Channel.SMS and not time(8) <= clock.time() < time(20):
            day = clock.date() + timedelta(days=1 if clock.hour >= 20 else 0)
            opens = datetime.combine(day, time(8), EASTERN).astimezone(UTC)
            return Defer(opens, "us.md.quiet_hours", "Maryland allows texts from 08:00 to 20:00")
        return Allow()

    return gate


def defer_until(channel: Channel, until: datetime, rule: str = "store.cooldown") -> GateFactory:
    def factory(now: datetime) -> SendGate:
        def gate(step: Step, _planned: tuple[Step, ...]) -> GateResult:
            if step.channel is channel and now < until:
                return Defer(until, rule, f"the {channel} cooldown runs until {until:%H:%M}")
            return Allow()

        return gate

    return factory


GateFactory = Callable[[datetime], SendGate]


@dataclass(frozen=True)
class Event:
    at: datetime
    decision: StepDecision


def follow(
    flow: Flow,
    gates: GateFactory = lambda _now: lambda _step, _planned: Allow(),
    *,
    opened: frozenset[str] = frozenset(),
    enrollment: Enrollment | None = None,
) -> tuple[list[Event], Enrollment]:
    """Wake the enrollment at each of its wake times, as a worker that is never down would;
    steps in `opened` are opened as soon as they are sent."""
    state = enrollment or start(flow)
    events: list[Event] = []
    for _ in range(100):
        if state.wake_at is None:
            return events, state
        now = state.wake_at
        result = advance(flow, state, CART, CONTACT, now, gate=gates(now))
        events.extend(Event(now, decision) for decision in result.decisions)
        state = result.enrollment
        history = {
            step_id: StepOutcome(sent=True, opened=True, queued_at=outcome.queued_at)
            if step_id in opened and outcome.sent
            else outcome
            for step_id, outcome in state.history.items()
        }
        state = replace(state, history=history)
    raise AssertionError("the enrollment never finished")


def sent(events: list[Event]) -> list[tuple[str | None, datetime]]:
    return [(e.decision.step_id, e.at) for e in events if e.decision.outcome is Outcome.SEND]


def of(events: list[Event], step_id: str, outcome: Outcome) -> list[Event]:
    return [e for e in events if e.decision.step_id == step_id and e.decision.outcome is outcome]


# ---- an SMS held for quiet hours does not hold the email -------------------------------------


def test_an_sms_held_for_quiet_hours_goes_at_0800_while_email1_goes_at_2130() -> None:
    events, final = follow(DEFAULT_LIKE, sms_window)
    times = dict(sent(events))
    # sms1 was due at 20:45, after the 20:00 close: it waits for 08:00 the next morning.
    [deferred] = of(events, "sms1", Outcome.DEFER)
    assert deferred.at == local(23, 20, 45)
    assert deferred.decision.rule == "us.md.quiet_hours"
    assert "sms1 is held until 2026-11-24 13:00 UTC" in deferred.decision.reason
    assert "other channels keep their own time" in deferred.decision.reason
    # email1 has no quiet hours: it goes at its own time that evening.
    assert times["email1"] == local(23, 21, 30)
    assert times["sms1"] == local(24, 8, 0)
    assert final.state is EnrollmentState.COMPLETED and final.holds == {}


def test_steps_after_a_held_one_keep_their_own_time() -> None:
    events, _ = follow(DEFAULT_LIKE, sms_window)
    times = dict(sent(events))
    # email2 (21h) and email3 (72h) keep their offsets from abandonment: the hold of the SMS
    # around them moved neither.
    assert times["email2"] == ABANDONED + timedelta(hours=21)
    assert times["email3"] == ABANDONED + timedelta(hours=72)
    # Messages on one channel keep their order and their planned distance: sms2 (8h, due at
    # 04:30) waits behind sms1 and then keeps its 7h45m after it.
    assert [step for step, _ in sent(events) if step and step.startswith("sms")] == [
        "sms1",
        "sms2",
        "sms3",
    ]
    assert times["sms2"] == times["sms1"] + timedelta(hours=7, minutes=45)
    behind, order = [e for e in of(events, "sms2", Outcome.DEFER) if e.decision.rule == ORDER_RULE]
    assert "waits for sms1: follows sms1 on the sms channel" in behind.decision.reason
    assert "keeps its 7h45m after sms1" in order.decision.reason


def test_no_two_messages_of_the_enrollment_go_out_within_the_spacing() -> None:
    events, _ = follow(DEFAULT_LIKE, sms_window)
    times = sorted(at for _, at in sent(events))
    assert len(times) == 6
    assert all(b - a >= DEFAULT_SPACING for a, b in pairwise(times))


# ---- spacing when a released SMS meets an email ----------------------------------------------

TWO = """\
name: t
abandon_after: 10m
{extra}steps:
  - {{id: sms1, at: 15m, channel: sms, body: one}}
  - {{id: email1, at: 1h, channel: email, subject: s, body: two}}
  - {{id: email2, at: 5h, channel: email, subject: s, body: three}}
"""


def test_a_released_sms_that_coincides_with_an_email_follows_it_by_30_minutes() -> None:
    flow = parse_flow(TWO.format(extra=""), "t.yaml")
    email_due = ABANDONED + timedelta(hours=1)
    events, _ = follow(flow, defer_until(Channel.SMS, email_due))
    # The email is on its own time and goes first; the released SMS follows by the spacing.
    assert sent(events)[:2] == [
        ("email1", email_due),
        ("sms1", email_due + timedelta(minutes=30)),
    ]
    [spaced] = [e for e in of(events, "sms1", Outcome.DEFER) if e.decision.rule == SPACING_RULE]
    assert spaced.at == email_due
    assert "spaced 30m after email1" in spaced.decision.reason
    assert "held until" in spaced.decision.reason


def test_a_released_sms_lets_an_email_due_within_the_gap_go_first() -> None:
    flow = parse_flow(TWO.format(extra=""), "t.yaml")
    email_due = ABANDONED + timedelta(hours=1)
    events, _ = follow(flow, defer_until(Channel.SMS, email_due - timedelta(minutes=10)))
    assert sent(events)[:2] == [
        ("email1", email_due),
        ("sms1", email_due + timedelta(minutes=30)),
    ]
    yielded = of(events, "sms1", Outcome.DEFER)[1]
    assert yielded.decision.rule == SPACING_RULE
    assert "lets email1" in yielded.decision.reason and "go first" in yielded.decision.reason


def test_the_flow_sets_its_own_spacing() -> None:
    flow = parse_flow(TWO.format(extra="spacing: 10m\n"), "t.yaml")
    assert flow.spacing == timedelta(minutes=10)
    email_due = ABANDONED + timedelta(hours=1)
    events, _ = follow(flow, defer_until(Channel.SMS, email_due))
    assert sent(events)[:2] == [
        ("email1", email_due),
        ("sms1", email_due + timedelta(minutes=10)),
    ]


def test_a_released_sms_far_from_any_email_goes_at_its_hold() -> None:
    flow = parse_flow(TWO.format(extra=""), "t.yaml")
    until = ABANDONED + timedelta(hours=2)
    events, _ = follow(flow, defer_until(Channel.SMS, until))
    assert sent(events) == [
        ("email1", ABANDONED + timedelta(hours=1)),
        ("sms1", until),
        ("email2", ABANDONED + timedelta(hours=5)),
    ]
    [released] = of(events, "sms1", Outcome.SEND)
    assert "released from its hold" in released.decision.reason


@pytest.mark.parametrize(("spacing", "message"), [("30s", "too short"), ("soon", "invalid")])
def test_a_spacing_under_a_minute_or_not_a_duration_is_refused_with_its_line(
    spacing: str, message: str
) -> None:
    with pytest.raises(FlowError) as refused:
        parse_flow(TWO.format(extra=f"spacing: {spacing}\n"), "t.yaml")
    assert "t.yaml:3: spacing:" in str(refused.value)
    assert message in str(refused.value)


# ---- the order that matters is kept ----------------------------------------------------------

READS = """\
name: t
abandon_after: 10m
steps:
  - {id: email1, at: 15m, channel: email, subject: s, body: one}
  - {id: sms1, at: 2h, channel: sms, when: not email1.opened, body: two}
  - {id: email2, at: 3h, channel: email, subject: s, body: three}
"""


def test_a_step_whose_condition_reads_a_held_step_waits_for_it_and_its_distance() -> None:
    flow = parse_flow(READS, "t.yaml")
    until = ABANDONED + timedelta(hours=3)
    events, _ = follow(flow, defer_until(Channel.EMAIL, until, "store.email_cooldown"))
    [waiting, distance] = of(events, "sms1", Outcome.DEFER)
    # At 2h email1 is still held: sms1 cannot read email1.opened yet.
    assert waiting.at == ABANDONED + timedelta(hours=2)
    assert waiting.decision.rule == READS_RULE
    assert "waits for email1: its condition reads email1" in waiting.decision.reason
    # Once email1 went (at 3h), sms1 keeps its planned 1h45m after it before it reads it.
    assert distance.decision.rule == READS_RULE
    assert sent(events) == [
        ("email1", until),
        ("sms1", until + timedelta(hours=1, minutes=45)),
        # email2 was held behind email1 on the email channel; it keeps its 2h45m after it.
        ("email2", until + timedelta(hours=2, minutes=45)),
    ]


def test_the_condition_is_evaluated_against_the_read_step_once_it_went() -> None:
    flow = parse_flow(READS, "t.yaml")
    until = ABANDONED + timedelta(hours=3)
    events, _ = follow(
        flow,
        defer_until(Channel.EMAIL, until, "store.email_cooldown"),
        opened=frozenset({"email1"}),
    )
    [skipped] = of(events, "sms1", Outcome.SKIP)
    assert skipped.decision.rule == "when"
    assert skipped.at == until + timedelta(hours=1, minutes=45)


def test_a_sms_never_goes_before_an_earlier_held_sms() -> None:
    flow = parse_flow(
        """\
name: t
abandon_after: 10m
steps:
  - {id: sms1, at: 15m, channel: sms, body: one}
  - {id: email1, at: 30m, channel: email, subject: s, body: two}
  - {id: sms2, at: 1h, channel: sms, body: three}
""",
        "t.yaml",
    )
    until = ABANDONED + timedelta(hours=4)
    events, _ = follow(flow, defer_until(Channel.SMS, until))
    [behind, distance] = of(events, "sms2", Outcome.DEFER)
    assert behind.decision.rule == ORDER_RULE
    assert "waits for sms1: follows sms1 on the sms channel" in behind.decision.reason
    assert "keeps its 45m after sms1" in distance.decision.reason
    assert sent(events) == [
        ("email1", ABANDONED + timedelta(minutes=30)),
        ("sms1", until),
        ("sms2", until + timedelta(minutes=45)),
    ]


# ---- the timer's guarantees hold for held steps ----------------------------------------------


def test_a_held_step_woken_long_after_its_hold_is_late() -> None:
    flow = parse_flow(TWO.format(extra=""), "t.yaml")
    until = ABANDONED + timedelta(minutes=40)
    state = start(flow)
    gate = defer_until(Channel.SMS, until)(ABANDONED)
    first = advance(flow, state, CART, CONTACT, ABANDONED + timedelta(minutes=15), gate=gate)
    assert first.enrollment.holds == {"sms1": until}
    # The worker was down until 5h30: sms1 (held to 40m, 45m grace) and email1 (1h, 4h grace)
    # are late; email2 (5h) is not.
    now = ABANDONED + timedelta(hours=5, minutes=30)
    later = advance(flow, first.enrollment, CART, CONTACT, now)
    late = {d.step_id: d for d in later.decisions if d.rule == "timer.late"}
    assert set(late) == {"sms1", "email1"}
    assert "due 2026-11-24 02:10:00 UTC" in late["sms1"].reason
    assert [step.id for step in later.sends] == ["email2"]


def test_one_advance_never_queues_two_messages_even_with_holds_released() -> None:
    flow = parse_flow(TWO.format(extra=""), "t.yaml")
    state = advance(
        flow,
        start(flow),
        CART,
        CONTACT,
        ABANDONED + timedelta(minutes=15),
        gate=defer_until(Channel.SMS, ABANDONED + timedelta(minutes=50))(ABANDONED),
    ).enrollment
    result = advance(flow, state, CART, CONTACT, ABANDONED + timedelta(hours=1, minutes=5))
    assert len(result.sends) == 1
    assert result.enrollment.wake_at is not None


def test_a_step_held_again_after_it_was_decided_makes_the_enrollment_wait() -> None:
    flow = parse_flow(TWO.format(extra=""), "t.yaml")
    done = advance(
        flow,
        replace(start(flow), step_index=2, wake_at=ABANDONED + timedelta(hours=5)),
        CART,
        CONTACT,
        ABANDONED + timedelta(hours=5),
    )
    assert done.finished
    until = ABANDONED + timedelta(hours=5, minutes=5)
    again = hold_step(done.enrollment, "email2", until)
    assert again.state is EnrollmentState.ACTIVE
    assert again.holds == {"email2": until} and again.wake_at == until
    assert "email2" not in again.history
    retried = advance(flow, again, CART, CONTACT, until)
    assert [step.id for step in retried.sends] == ["email2"]
    assert retried.finished


# ---- invariants under arbitrary holds --------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_under_random_holds_every_step_is_decided_once_in_a_kept_order(seed: int) -> None:
    """Gates that defer random steps to random times: the timer never goes back in time, queues
    at most one message per wake, decides every step exactly once, keeps each channel's order,
    never reads a step before it went, and spaces what a hold brought together."""
    rng = random.Random(seed)
    deferrals: dict[str, list[timedelta]] = {
        step.id: [timedelta(minutes=rng.choice([5, 30, 50, 120, 600])) for _ in range(2)]
        for step in DEFAULT_LIKE.steps
        if rng.random() < 0.5
    }

    def gates(now: datetime) -> SendGate:
        def gate(step: Step, _planned: tuple[Step, ...]) -> GateResult:
            waits = deferrals.get(step.id)
            if waits:
                return Defer(now + waits.pop(), "test.hold", "held by the test")
            return Allow()

        return gate

    events, final = follow(DEFAULT_LIKE, gates)
    assert final.state is EnrollmentState.COMPLETED and final.holds == {}
    wakes = [event.at for event in events]
    assert wakes == sorted(wakes)
    sends = sent(events)
    assert len({at for _, at in sends}) == len(sends)  # one message per wake
    final_outcomes = [
        e.decision.step_id
        for e in events
        if e.decision.outcome in (Outcome.SEND, Outcome.SKIP, Outcome.HOLDOUT)
    ]
    assert sorted(final_outcomes) == sorted(step.id for step in DEFAULT_LIKE.steps)
    times = dict(sends)
    steps = {step.id: step for step in DEFAULT_LIKE.steps}
    for channel in Channel:
        mine = [s for s, _ in sends if s is not None and steps[s].channel is channel]
        assert mine == sorted(mine, key=DEFAULT_LIKE.index_of)
    # sms2 reads email1.opened, sms3 reads email2.clicked: each keeps its planned distance.
    for reader, read in (("sms2", "email1"), ("sms3", "email2")):
        if reader in times and read in times:
            assert times[reader] - times[read] >= steps[reader].at - steps[read].at
    ordered = sorted(sends, key=lambda item: item[1])
    for (a, at_a), (b, at_b) in pairwise(ordered):
        assert a is not None and b is not None
        planned = abs(steps[a].at - steps[b].at)
        assert at_b - at_a >= min(DEFAULT_SPACING, planned)
