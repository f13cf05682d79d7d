"""The flow engine: where an enrollment stands, and what happens when its timer fires.

Pure: the caller passes the flow, the cart, the contact, the step history, a send gate and `now`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from cartback.core.conditions import build_facts
from cartback.core.flows import MIN_GRACE, Flow, Step
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


class Outcome(StrEnum):
    SEND = "send"
    SKIP = "skip"
    DEFER = "defer"
    HOLDOUT = "holdout"
    EXIT = "exit"
    COMPLETE = "complete"
    # The timer could not evaluate or write the enrollment (see services.tick).
    ERROR = "error"


# A step this much past its due time is skipped, not sent: a catch-up after downtime must not
# deliver a whole sequence at once. The default grace is the gap to the next step, within these.
MAX_GRACE = timedelta(hours=6)
LATE_RULE = "timer.late"


GateResult = Allow | Defer | Skip
__all__ = ["Allow", "Defer", "GateResult", "SendGate", "Skip"]
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


def grace_for(flow: Flow, index: int) -> timedelta:
    """How long after its due time step `index` may still run: the flow's `grace`, else the gap
    to the next step with a later offset, capped at MAX_GRACE (the last step: MAX_GRACE), and
    never under MIN_GRACE."""
    if flow.grace is not None:
        return flow.grace
    step = flow.steps[index]
    for later in flow.steps[index + 1 :]:
        if later.at > step.at:
            return max(MIN_GRACE, min(later.at - step.at, MAX_GRACE))
    return MAX_GRACE


def due_at(
    flow: Flow, enrollment: Enrollment, history: Mapping[str, StepOutcome], index: int
) -> datetime:
    """When step `index` is due: its offset from abandonment, or from the last queued message
    if that is later (the step keeps its distance from the earlier step that went out)."""
    step = flow.steps[index]
    due = enrollment.abandoned_at + step.at
    for earlier in reversed(flow.steps[:index]):
        queued_at = history[earlier.id].queued_at if earlier.id in history else None
        if queued_at is not None:
            return max(due, queued_at + (step.at - earlier.at))
    return due


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
    """Run the due steps at `now`, in order, until one must wait or one message was queued.

    A step more than its grace past its due time is skipped as late; a deferral moves the due
    time of its step; after a message the next step waits for its own due time (`due_at`).
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

    history = dict(enrollment.history)
    decisions: list[StepDecision] = []
    sends: list[Step] = []
    send_before: dict[str, datetime] = {}
    index = enrollment.step_index
    wake_at: datetime | None = None
    while index < len(flow.steps):
        step = flow.steps[index]
        due = due_at(flow, enrollment, history, index)
        if index == enrollment.step_index and enrollment.wake_at is not None:
            # The step this timer was set for: a deferral may have moved it past its offset.
            due = max(due, enrollment.wake_at)
        if due > now:
            wake_at = due
            break
        grace = grace_for(flow, index)
        if now - due > grace:
            decisions.append(
                StepDecision(
                    step.id,
                    Outcome.SKIP,
                    f"late: due {due:%Y-%m-%d %H:%M:%S} UTC, {format_duration(now - due)} ago, "
                    f"more than the {format_duration(grace)} grace",
                    LATE_RULE,
                )
            )
            history[step.id] = StepOutcome(skipped=True)
            index += 1
            continue
        missing = uncovered(step.amounts, cart.currency, rates)
        if missing:
            reason = currency_reason(missing, cart.currency, rates)
            decisions.append(StepDecision(step.id, Outcome.SKIP, reason, CURRENCY_RULE))
            history[step.id] = StepOutcome(skipped=True)
            index += 1
            continue
        if step.when is not None and not step.when.evaluate(
            build_facts(cart, contact, enrollment.variant, history, flow.exclusions, rates)
        ):
            decisions.append(
                StepDecision(
                    step.id, Outcome.SKIP, f"condition is false: {step.when.source}", "when"
                )
            )
            history[step.id] = StepOutcome(skipped=True)
            index += 1
            continue
        if enrollment.holdout:
            decisions.append(
                StepDecision(step.id, Outcome.HOLDOUT, "cart is in the holdout group", "holdout")
            )
            history[step.id] = StepOutcome(skipped=True)
            index += 1
            continue
        if enrollment.held_channel == str(step.channel):
            decisions.append(
                StepDecision(
                    step.id,
                    Outcome.HOLDOUT,
                    f"cart is in the {step.channel} holdout group",
                    CHANNEL_HOLDOUT_RULE,
                )
            )
            history[step.id] = StepOutcome(skipped=True)
            index += 1
            continue
        verdict = gate(step, tuple(sends))
        if isinstance(verdict, Defer):
            decisions.append(StepDecision(step.id, Outcome.DEFER, verdict.reason, verdict.rule))
            wake_at = verdict.until
            break
        if isinstance(verdict, Skip):
            decisions.append(StepDecision(step.id, Outcome.SKIP, verdict.reason, verdict.rule))
            history[step.id] = StepOutcome(skipped=True)
            index += 1
            continue
        decisions.append(StepDecision(step.id, Outcome.SEND, f"{step.channel} step is due"))
        if verdict.until is not None:
            send_before[step.id] = verdict.until
        history[step.id] = StepOutcome(sent=True, queued_at=now)
        sends.append(step)
        index += 1
        if index < len(flow.steps):
            # One message per wake: the next step waits, keeping its distance from this one.
            wake_at = due_at(flow, enrollment, history, index)
        break

    if index >= len(flow.steps):
        done = replace(
            enrollment,
            step_index=index,
            state=EnrollmentState.COMPLETED,
            wake_at=None,
            history=history,
        )
        decisions.append(StepDecision(None, Outcome.COMPLETE, "all steps have run"))
        return Advance(done, tuple(decisions), tuple(sends), send_before)
    waiting = replace(enrollment, step_index=index, wake_at=wake_at, history=history)
    return Advance(waiting, tuple(decisions), tuple(sends), send_before)


_EXIT_TEXT = {
    "order_placed": "exit: the shopper placed an order",
    "cart_emptied": "exit: the cart was emptied",
    "opted_out": "exit: the shopper opted out",
    "contact_erased": "exit: the contact was erased",
}
