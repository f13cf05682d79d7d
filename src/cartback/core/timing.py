"""When a step may go: its due time on its turn, its grace, and what it must still wait for
once that time has come (a held step before it on its channel or read by its condition, the
planned distances it keeps, the spacing between messages).

Pure, like the engine that uses it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cartback.core.conditions import ENGAGEMENT_FIELDS
from cartback.core.flows import MIN_GRACE, Flow, Step
from cartback.core.model import Enrollment, StepOutcome, format_duration

# A step this much past its due time is skipped, not sent: a catch-up after downtime must not
# deliver a whole sequence at once. The default grace is the gap to the next step, within these.
MAX_GRACE = timedelta(hours=6)
# Why a step whose time has come still waits (see `blocker` and `not_before`).
ORDER_RULE = "flow.order"
READS_RULE = "flow.reads"
SPACING_RULE = "flow.spacing"
_PRECEDENCE = {SPACING_RULE: 0, READS_RULE: 1, ORDER_RULE: 2}


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
    """When step `index` is due on its turn: its offset from abandonment, or from the last
    message that went out on its turn if that is later (after a late message the sequence
    keeps its rhythm). A message that went out of a hold does not count: a hold moves its own
    step (and, through `not_before`, its channel and its readers), not the whole sequence."""
    return sequence_time(flow, enrollment.abandoned_at, history, enrollment.released, index)


def sequence_time(
    flow: Flow,
    abandoned_at: datetime,
    history: Mapping[str, StepOutcome],
    released: Collection[str],
    index: int,
) -> datetime:
    step = flow.steps[index]
    due = abandoned_at + step.at
    for earlier in reversed(flow.steps[:index]):
        if earlier.id in released:
            continue
        queued_at = history[earlier.id].queued_at if earlier.id in history else None
        if queued_at is not None:
            return max(due, queued_at + (step.at - earlier.at))
    return due


def spacing_between(flow: Flow, step: Step, other: Step) -> timedelta:
    """The least time between the messages of two steps: the flow's `spacing`, or their
    planned distance when the flow itself plans them closer than that. Two steps planned at
    the same offset are spaced too: they are never sent together."""
    planned = abs(step.at - other.at)
    return flow.spacing if planned == timedelta(0) else min(flow.spacing, planned)


@dataclass(frozen=True, slots=True)
class Wait:
    """Why a step whose time has come must still wait, and until when."""

    until: datetime
    rule: str
    reason: str


def blocker(flow: Flow, index: int, holds: Mapping[str, datetime]) -> tuple[Step, str] | None:
    """A held step that step `index` must wait for, with the rule: the step before it on its
    own channel (messages on one channel keep their order), or a step its condition reads (a
    condition never reads a step that has not been decided)."""
    if not holds:
        return None  # most wakes hold nothing: no need to look for the steps
    step = flow.steps[index]
    same = next((s for s in reversed(flow.steps[:index]) if s.channel is step.channel), None)
    if same is not None and same.id in holds:
        return same, ORDER_RULE
    for read_id in sorted(step.when.step_refs) if step.when is not None else ():
        if read_id in holds:
            return flow.step(read_id), READS_RULE
    return None


def not_before(flow: Flow, index: int, history: Mapping[str, StepOutcome]) -> Wait | None:
    """The latest of the times that step `index` may not go before, given the messages already
    queued: its planned distance from the previous message on its channel, its planned distance
    from each step whose opens, clicks or deliveries its condition reads, and the spacing from
    every message of the enrollment. None when nothing was queued."""
    latest = latest_wait(flow, index, history)
    return None if latest is None else wait_for(flow, flow.steps[index], latest, history)


# (until, rule, the step it waits after, the field its condition reads): the reason is written
# only for a step that must wait, since formatting it costs more than finding it.
Latest = tuple[datetime, str, Step, str]


def wait_for(flow: Flow, step: Step, latest: Latest, history: Mapping[str, StepOutcome]) -> Wait:
    until, rule, other, field_name = latest
    return Wait(until, rule, _why_it_waits(flow, step, other, rule, field_name, history))


def latest_wait(flow: Flow, index: int, history: Mapping[str, StepOutcome]) -> Latest | None:
    step = flow.steps[index]
    latest: Latest | None = None

    def consider(until: datetime, rule: str, other: Step, field_name: str = "") -> None:
        nonlocal latest
        # On a tie the reason names the order or the read, which say more than the spacing.
        if latest is None or (until, _PRECEDENCE[rule]) > (latest[0], _PRECEDENCE[latest[1]]):
            latest = (until, rule, other, field_name)

    same_found = False
    for other in reversed(flow.steps[:index]):
        outcome = history.get(other.id)
        at = outcome.queued_at if outcome is not None else None
        if at is None:
            continue
        if not same_found and other.channel is step.channel:
            same_found = True
            consider(at + (step.at - other.at), ORDER_RULE, other)
        consider(at + spacing_between(flow, step, other), SPACING_RULE, other)
    for other in flow.steps[index + 1 :]:
        outcome = history.get(other.id)
        if outcome is not None and outcome.queued_at is not None:
            consider(outcome.queued_at + spacing_between(flow, step, other), SPACING_RULE, other)
    if step.when is not None:
        for read_id, field_name in step.when.step_reads:
            outcome = history.get(read_id)
            if field_name in ENGAGEMENT_FIELDS and outcome is not None and outcome.queued_at:
                read = flow.step(read_id)
                gap = max(step.at - read.at, timedelta(0))
                consider(outcome.queued_at + gap, READS_RULE, read, field_name)
    return latest


def _why_it_waits(
    flow: Flow,
    step: Step,
    other: Step,
    rule: str,
    field_name: str,
    history: Mapping[str, StepOutcome],
) -> str:
    at = history[other.id].queued_at
    assert at is not None
    went = f"which went at {utc_text(at)}"
    if rule == ORDER_RULE:
        gap = step.at - other.at
        return (
            f"keeps its {format_duration(gap)} after {other.id}, the previous {step.channel} "
            f"step, {went}"
        )
    if rule == READS_RULE:
        gap = max(step.at - other.at, timedelta(0))
        return (
            f"its condition reads {other.id}.{field_name}, planned {format_duration(gap)} "
            f"after {other.id}, {went}"
        )
    gap = spacing_between(flow, step, other)
    return (
        f"spaced {format_duration(gap)} after {other.id}, {went}: two messages to one shopper "
        "never go out together"
    )


def utc_text(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
