"""The flow engine: where an enrollment stands, and what happens when its timer fires.

Pure: the caller passes the flow, the cart, the contact, the step history, a send gate and `now`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from cartback.core.conditions import build_facts
from cartback.core.flows import Flow, Step
from cartback.core.model import (
    Cart,
    CartStatus,
    Contact,
    Enrollment,
    EnrollmentState,
    StepOutcome,
    format_duration,
)
from cartback.core.money import CURRENCY_RULE, Rates, currency_reason, uncovered
from cartback.core.policy import Allow, Defer, Skip
from cartback.core.timing import (
    MAX_GRACE,
    ORDER_RULE,
    READS_RULE,
    SPACING_RULE,
    Wait,
    blocker,
    due_at,
    grace_for,
    latest_wait,
    not_before,
    sequence_time,
    spacing_between,
    utc_text,
    wait_for,
)


class Outcome(StrEnum):
    SEND = "send"
    SKIP = "skip"
    DEFER = "defer"
    HOLDOUT = "holdout"
    EXIT = "exit"
    COMPLETE = "complete"
    # The timer could not evaluate or write the enrollment (see services.tick).
    ERROR = "error"


# A step more than its grace past its due time is skipped with this rule (core.timing.grace_for).
LATE_RULE = "timer.late"


GateResult = Allow | Defer | Skip
__all__ = [
    "MAX_GRACE",
    "ORDER_RULE",
    "READS_RULE",
    "SPACING_RULE",
    "Allow",
    "Defer",
    "GateResult",
    "SendGate",
    "Skip",
    "Wait",
    "blocker",
    "due_at",
    "grace_for",
    "not_before",
    "spacing_between",
]
# Decides, at send time, whether one step may go out now. `planned` are the steps this same
# evaluation already decided to send, so cooldowns and caps can count them.
SendGate = Callable[[Step, tuple[Step, ...]], GateResult]


def allow_all(_step: Step, _planned: tuple[Step, ...]) -> GateResult:
    return Allow()


@dataclass(frozen=True, slots=True)
class StepDecision:
    step_id: str | None
    outcome: Outcome
    reason: str
    rule: str | None = None


@dataclass(frozen=True, slots=True)
class Advance:
    """The result of firing one enrollment's timer: what to record, send, and when to wake."""

    enrollment: Enrollment
    decisions: tuple[StepDecision, ...]
    sends: tuple[Step, ...] = field(default=())
    # Per step id in `sends`: the instant the message must be out by (see Allow.until).
    send_before: Mapping[str, datetime] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.enrollment.state is not EnrollmentState.ACTIVE


@dataclass(frozen=True, slots=True)
class EnrollmentPlan:
    abandoned_at: datetime
    wake_at: datetime
    variant: str | None
    holdout: bool
    # The channel this cart gets no steps of (the flow's channel holdout), or None.
    held_channel: str | None = None

    def enrollment(self, flow: Flow, *, id: int, store_id: int, cart_id: int) -> Enrollment:
        """The new, active enrollment row this plan starts (the simulators keep it in memory)."""
        return Enrollment(
            id=id,
            store_id=store_id,
            cart_id=cart_id,
            flow_name=flow.name,
            flow_version=flow.version,
            step_index=0,
            state=EnrollmentState.ACTIVE,
            abandoned_at=self.abandoned_at,
            wake_at=self.wake_at,
            variant=self.variant,
            holdout=self.holdout,
            held_channel=self.held_channel,
        )


CHANNEL_HOLDOUT_RULE = "channel_holdout"


def bucket(*parts: str) -> Decimal:
    """A stable number in [0, 100) from the parts: the same cart always lands in the same group."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return Decimal(int.from_bytes(digest[:8], "big") % 1_000_000) / Decimal(10_000)


def plan_enrollment(
    flow: Flow, cart_token: str, last_activity: datetime, *, promoted: str | None = None
) -> EnrollmentPlan:
    """Where a new cart stands: its groups come from hashes of the flow and the cart token, so
    they survive restarts; they are stored on the enrollment and never re-drawn. `promoted` is
    a winning variant the store promoted: new carts all get it."""
    abandoned_at = last_activity + flow.abandon_after
    holdout = bucket(flow.name, "holdout", cart_token) < flow.holdout_percent
    held_channel = None
    # Its own hash: independent of the holdout and the variant, so each group gets its share.
    split = flow.channel_holdout
    if split is not None and bucket(flow.name, "channel_holdout", cart_token) < split.percent:
        held_channel = str(split.channel)
    return EnrollmentPlan(
        abandoned_at=abandoned_at,
        wake_at=abandoned_at + flow.steps[0].at,
        variant=pick_variant(flow, cart_token, promoted=promoted),
        holdout=holdout,
        held_channel=held_channel,
    )


def pick_variant(flow: Flow, cart_token: str, *, promoted: str | None = None) -> str | None:
    if not flow.variants:
        return None
    if promoted is not None and any(variant.name == promoted for variant in flow.variants):
        return promoted
    total = sum(variant.weight for variant in flow.variants)
    point = bucket(flow.name, "variant", cart_token) * total / 100
    running = Decimal(0)
    for variant in flow.variants:
        running += variant.weight
        if point < running:
            return variant.name
    return flow.variants[-1].name


def may_enroll(
    flow: Flow, cart: Cart, contact: Contact | None, *, rates: Rates | None = None
) -> bool:
    """`rates`: the store's exchange rates. An `enroll_when` amount that cannot be given in the
    cart's currency makes its comparison false, so such a cart is not enrolled."""
    if cart.status is not CartStatus.OPEN or not cart.lines or contact is None:
        return False
    if not (contact.phone or contact.email):
        return False
    if flow.enroll_when is None:
        return True
    facts = build_facts(cart, contact, None, {}, flow.exclusions, rates)
    return flow.enroll_when.evaluate(facts)


def exit_reason(flow: Flow, cart: Cart, contact: Contact | None, *, opted_out: bool) -> str | None:
    """Why the enrollment must stop now, checked every time it wakes and before every send."""
    if cart.status is CartStatus.ORDERED and "order_placed" in flow.exit_on:
        return "order_placed"
    if (cart.status is CartStatus.EMPTIED or not cart.lines) and "cart_emptied" in flow.exit_on:
        return "cart_emptied"
    if opted_out and "opted_out" in flow.exit_on:
        return "opted_out"
    if contact is None:
        return "contact_erased"
    return None


def advance(
    flow: Flow,
    enrollment: Enrollment,
    cart: Cart,
    contact: Contact | None,
    now: datetime,
    *,
    opted_out: bool = False,
    gate: SendGate = allow_all,
    rates: Rates | None = None,
) -> Advance:
    """Run the steps whose time has come at `now`, earliest first, until one message was
    queued or none is due.

    Each step keeps its own time. A step a rule defers (quiet hours, a cooldown) is held: it
    waits for its own instant while the steps after it go on at theirs. What must keep its
    order waits behind a held step: the next step on the same channel, and a step whose
    condition reads it. Released and on-time messages are spaced by the flow's `spacing`. A
    step more than its grace past its due time is skipped as late.
    A step whose condition or discount names money the cart's currency has no figure for (and
    `rates`, the store's exchange rates, cannot convert) is skipped as flow.currency.
    """
    if enrollment.state is not EnrollmentState.ACTIVE:
        return Advance(enrollment, ())
    reason = exit_reason(flow, cart, contact, opted_out=opted_out)
    if reason is not None:
        ended = replace(enrollment, state=EnrollmentState.EXITED, wake_at=None, exit_reason=reason)
        return Advance(ended, (StepDecision(None, Outcome.EXIT, _EXIT_TEXT[reason]),))
    assert contact is not None
    walk = _Walk(flow, enrollment, cart, contact, now, gate, rates)
    # Each turn decides a step or moves a hold past `now`; the bound only guards against a
    # gate that defers to the past.
    for _ in range(4 * len(flow.steps) + 4):
        picked = walk.next_due()
        if picked is None or walk.decide(*picked):
            break
    return walk.result()


class _Walk:
    """The working state of one `advance`: which steps were decided, which are held."""

    def __init__(
        self,
        flow: Flow,
        enrollment: Enrollment,
        cart: Cart,
        contact: Contact,
        now: datetime,
        gate: SendGate,
        rates: Rates | None,
    ) -> None:
        self.flow, self.enrollment, self.cart, self.contact = flow, enrollment, cart, contact
        self.now, self.gate, self.rates = now, gate, rates
        self.history = dict(enrollment.history)
        self.holds = dict(enrollment.holds)
        self.released = set(enrollment.released)
        self.cursor = enrollment.step_index
        # cursor_time, kept until the cursor, history or released steps change (hold, resolve).
        self._cursor_time: tuple[datetime | None] | None = None
        self.decisions: list[StepDecision] = []
        self.sends: list[Step] = []
        self.send_before: dict[str, datetime] = {}

    # ---- when ---------------------------------------------------------------------------------

    def cursor_time(self) -> datetime | None:
        """When the next step on its turn is due; None once every step had its turn."""
        if self._cursor_time is not None:
            return self._cursor_time[0]
        due: datetime | None = None
        if self.cursor < len(self.flow.steps):
            due = sequence_time(
                self.flow, self.enrollment.abandoned_at, self.history, self.released, self.cursor
            )
            wake_at = self.enrollment.wake_at
            if self.cursor == self.enrollment.step_index and wake_at is not None:
                # The step this timer was set for: a retry may have moved it past its offset.
                due = max(due, wake_at)
        self._cursor_time = (due,)
        return due

    def held_time(self, step_id: str) -> datetime:
        until = self.holds[step_id]
        wake_at = self.enrollment.wake_at
        # A retried wake moves the held step's due time with it, as for the step on its turn.
        if wake_at is not None and until <= wake_at <= self.now:
            return wake_at
        return until

    def next_due(self) -> tuple[int, datetime, bool] | None:
        """(index, due, held) of the step to decide next: the earliest due; on a tie, the step
        on its own time before a released one, then file order."""
        found: list[tuple[datetime, int, int]] = []
        on_turn = self.cursor_time()
        if on_turn is not None and on_turn <= self.now:
            found.append((on_turn, 0, self.cursor))
        held_due = {
            step_id: self.held_time(step_id)
            for step_id in self.holds
            if self.held_time(step_id) <= self.now
        }
        for step_id, due in held_due.items():
            found.append((due, 1, self.flow.index_of(step_id)))
        if not found:
            return None
        due, kind, index = min(found)
        # A step that waits behind a held step whose own time has come: that one goes first.
        waits_for = blocker(self.flow, index, self.holds)
        while waits_for is not None and waits_for[0].id in held_due:
            index, due, kind = self.flow.index_of(waits_for[0].id), held_due[waits_for[0].id], 1
            waits_for = blocker(self.flow, index, self.holds)
        return index, due, kind == 1

    # ---- what ---------------------------------------------------------------------------------

    def decide(self, index: int, due: datetime, held: bool) -> bool:
        """Decide step `index`; True when a message was queued (one per wake)."""
        flow, step, now = self.flow, self.flow.steps[index], self.now
        waits_for = blocker(flow, index, self.holds)
        if waits_for is not None:
            other, rule = waits_for
            why = (
                f"follows {other.id} on the {step.channel} channel"
                if rule == ORDER_RULE
                else f"its condition reads {other.id}"
            )
            self.hold(index, held, Wait(self.holds[other.id], rule, f"waits for {other.id}: {why}"))
            return False
        held_out = self.enrollment.holdout or self.enrollment.held_channel == str(step.channel)
        if not held_out:
            latest = latest_wait(flow, index, self.history)
            if latest is not None and latest[0] > now:
                self.hold(index, held, wait_for(flow, step, latest, self.history))
                return False
            if latest is not None:
                due = max(due, latest[0])
            ahead = self.lets_go_first(step) if held else None
            if ahead is not None:
                self.hold(index, held, ahead)
                return False
        grace = grace_for(flow, index)
        if now - due > grace:
            self.resolve(
                index,
                held,
                StepDecision(
                    step.id,
                    Outcome.SKIP,
                    f"late: due {due:%Y-%m-%d %H:%M:%S} UTC, {format_duration(now - due)} ago, "
                    f"more than the {format_duration(grace)} grace",
                    LATE_RULE,
                ),
            )
            return False
        missing = uncovered(step.amounts, self.cart.currency, self.rates)
        if missing:
            reason = currency_reason(missing, self.cart.currency, self.rates)
            self.resolve(index, held, StepDecision(step.id, Outcome.SKIP, reason, CURRENCY_RULE))
            return False
        if step.when is not None and not step.when.evaluate(
            build_facts(
                self.cart,
                self.contact,
                self.enrollment.variant,
                self.history,
                flow.exclusions,
                self.rates,
            )
        ):
            reason = f"condition is false: {step.when.source}"
            self.resolve(index, held, StepDecision(step.id, Outcome.SKIP, reason, "when"))
            return False
        if self.enrollment.holdout:
            reason = "cart is in the holdout group"
            self.resolve(index, held, StepDecision(step.id, Outcome.HOLDOUT, reason, "holdout"))
            return False
        if self.enrollment.held_channel == str(step.channel):
            self.resolve(
                index,
                held,
                StepDecision(
                    step.id,
                    Outcome.HOLDOUT,
                    f"cart is in the {step.channel} holdout group",
                    CHANNEL_HOLDOUT_RULE,
                ),
            )
            return False
        verdict = self.gate(step, tuple(self.sends))
        if isinstance(verdict, Defer):
            note = (
                f"{verdict.reason}; {step.id} is held until {utc_text(verdict.until)}, "
                "the steps after it on other channels keep their own time"
            )
            self.hold(index, held, Wait(verdict.until, verdict.rule, note))
            return False
        if isinstance(verdict, Skip):
            self.resolve(
                index, held, StepDecision(step.id, Outcome.SKIP, verdict.reason, verdict.rule)
            )
            return False
        text = f"{step.channel} step is due" + (", released from its hold" if held else "")
        if verdict.until is not None:
            self.send_before[step.id] = verdict.until
        self.sends.append(step)
        self.resolve(
            index,
            held,
            StepDecision(step.id, Outcome.SEND, text),
            StepOutcome(sent=True, queued_at=now),
        )
        return True

    def lets_go_first(self, step: Step) -> Wait | None:
        """A released step yields to the next step on its turn, on another channel, due within
        the spacing: that one keeps its own time, and the released one follows it."""
        if self.cursor >= len(self.flow.steps):
            return None
        upcoming = self.flow.steps[self.cursor]
        if upcoming.channel is step.channel:
            return None
        if upcoming.when is not None and step.id in upcoming.when.step_refs:
            return None
        due = self.cursor_time()
        gap = spacing_between(self.flow, step, upcoming)
        if due is None or not self.now < due < self.now + gap:
            return None
        return Wait(
            due,
            SPACING_RULE,
            f"lets {upcoming.id}, due on its own time at {utc_text(due)}, go first; {step.id} "
            f"follows it by {format_duration(gap)}",
        )

    def hold(self, index: int, held: bool, wait: Wait) -> None:
        step = self.flow.steps[index]
        self.holds[step.id] = wait.until
        self._cursor_time = None
        if not held:
            self.cursor += 1
        reason = wait.reason
        if wait.rule in (ORDER_RULE, READS_RULE, SPACING_RULE):
            reason = f"{reason}; held until {utc_text(wait.until)}"
        self.decisions.append(StepDecision(step.id, Outcome.DEFER, reason, wait.rule))

    def resolve(
        self,
        index: int,
        held: bool,
        decision: StepDecision,
        outcome: StepOutcome | None = None,
    ) -> None:
        step = self.flow.steps[index]
        self.decisions.append(decision)
        self._cursor_time = None
        self.history[step.id] = outcome if outcome is not None else StepOutcome(skipped=True)
        if held:
            del self.holds[step.id]
            self.released.add(step.id)
        else:
            self.cursor += 1

    def result(self) -> Advance:
        state, wake_at = EnrollmentState.ACTIVE, None
        if self.cursor >= len(self.flow.steps) and not self.holds:
            state = EnrollmentState.COMPLETED
            self.decisions.append(StepDecision(None, Outcome.COMPLETE, "all steps have run"))
        else:
            times = list(self.holds.values())
            on_turn = self.cursor_time()
            if on_turn is not None:
                times.append(on_turn)
            wake_at = min(times)
        before = self.enrollment
        # Built field by field rather than with dataclasses.replace: this runs on every wake,
        # and replace costs twice as much. tests/unit/test_engine_speed.py holds every field.
        changed = Enrollment(
            id=before.id,
            store_id=before.store_id,
            cart_id=before.cart_id,
            flow_name=before.flow_name,
            flow_version=before.flow_version,
            step_index=self.cursor,
            state=state,
            abandoned_at=before.abandoned_at,
            wake_at=wake_at,
            variant=before.variant,
            holdout=before.holdout,
            exit_reason=before.exit_reason,
            held_channel=before.held_channel,
            history=self.history,
            holds=self.holds,
            released=frozenset(self.released),
        )
        return Advance(changed, tuple(self.decisions), tuple(self.sends), self.send_before)


def hold_step(enrollment: Enrollment, step_id: str, until: datetime) -> Enrollment:
    """The enrollment with step `step_id` held until `until` again, as if it had not gone:
    for a message the timer decided but could not compose yet (a unique code not issued)."""
    holds = {**enrollment.holds, step_id: until}
    history = {key: value for key, value in enrollment.history.items() if key != step_id}
    wake_at = until if enrollment.wake_at is None else min(enrollment.wake_at, until)
    return replace(
        enrollment,
        state=EnrollmentState.ACTIVE,
        holds=holds,
        history=history,
        wake_at=wake_at,
    )


_EXIT_TEXT = {
    "order_placed": "exit: the shopper placed an order",
    "cart_emptied": "exit: the cart was emptied",
    "opted_out": "exit: the shopper opted out",
    "contact_erased": "exit: the contact was erased",
}
