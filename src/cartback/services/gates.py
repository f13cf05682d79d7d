"""Send gates applied by the timer at send time: an address, then the policy's gates in order
(consent → suppression → exit → jurisdiction → quiet hours → cooldown and caps)."""

from __future__ import annotations

from collections.abc import Mapping, MutableSequence
from datetime import UTC, datetime, timedelta

from cartback.core.engine import Defer, GateResult, SendGate, Skip
from cartback.core.flows import Step
from cartback.core.jurisdiction import RuleSet
from cartback.core.model import (
    Cart,
    Channel,
    ConsentView,
    Contact,
    Enrollment,
    format_duration,
)
from cartback.core.policy import (
    Allow,
    SendRequest,
    SentRecord,
    StorePolicy,
    evaluate,
    rules_for_contact,
)


def policy_gate(
    cart: Cart,
    contact: Contact,
    enrollment: Enrollment,
    *,
    consent: Mapping[Channel, ConsentView],
    recent: MutableSequence[SentRecord],
    store_policy: StorePolicy,
    now: datetime,
    spacing: timedelta | None = None,
    rules: dict[Channel, RuleSet] | None = None,
) -> SendGate:
    """`recent` is this contact's sends of the last days; an allowed step is appended to it, so
    later decisions in the same batch (other carts of the same shopper) count it too. With
    `spacing` (the flow's), a message less than that after one from another cart of the same
    shopper is deferred: two carts never message one shopper together. `rules` keeps the
    contact's rule set per channel; a caller that fires the same contact's timer again and
    again (the backtest) passes one dict for all its wakes."""
    if rules is None:
        rules = {}

    def gate(step: Step, _planned: tuple[Step, ...]) -> GateResult:
        if step.channel is Channel.SMS and not contact.phone:
            return Skip("address", "the contact has no phone number")
        if step.channel is Channel.EMAIL and not contact.email:
            return Skip("address", "the contact has no email address")
        if step.channel not in rules:
            rules[step.channel] = rules_for_contact(contact, step.channel, store_policy)
        request = SendRequest(
            channel=step.channel,
            step_id=step.id,
            cart_id=cart.id,
            contact=contact,
            consent=consent[step.channel],
            cart_status=cart.status,
            abandoned_at=enrollment.abandoned_at,
            recent_sends=tuple(recent),
            store_policy=store_policy,
            rules=rules[step.channel],
        )
        verdict = evaluate(request, now)
        if isinstance(verdict, Allow) and spacing is not None:
            verdict = _spaced_from_other_carts(verdict, cart.id, recent, spacing, now)
        if isinstance(verdict, Allow):
            recent.append(SentRecord(channel=step.channel, at=now, cart_id=cart.id))
        return verdict

    return gate


SHOPPER_SPACING_RULE = "shopper.spacing"


def _spaced_from_other_carts(
    verdict: Allow,
    cart_id: int,
    recent: MutableSequence[SentRecord],
    spacing: timedelta,
    now: datetime,
) -> Allow | Defer:
    """The engine spaces one cart's own messages; this keeps another cart's from landing next to
    them (a shopper with two carts in recovery)."""
    others = [sent.at for sent in recent if sent.cart_id != cart_id and sent.at > now - spacing]
    if not others:
        return verdict
    last = max(others).astimezone(UTC)
    return Defer(
        last + spacing,
        SHOPPER_SPACING_RULE,
        f"another cart of this shopper got a message at {last:%Y-%m-%d %H:%M} UTC; messages to "
        f"one shopper are kept {format_duration(spacing)} apart",
    )
