"""Send gates applied by the timer at send time: an address, then the policy's gates in order
(consent → suppression → exit → jurisdiction → quiet hours → cooldown and caps)."""

from __future__ import annotations

from collections.abc import Mapping, MutableSequence
from datetime import datetime

from cartback.core.engine import GateResult, SendGate, Skip
from cartback.core.flows import Step
from cartback.core.jurisdiction import RuleSet
from cartback.core.model import Cart, Channel, ConsentView, Contact, Enrollment
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
) -> SendGate:
    """`recent` is this contact's sends of the last days; an allowed step is appended to it, so
    later decisions in the same batch (other carts of the same shopper) count it too."""
    rules: dict[Channel, RuleSet] = {}

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
        if isinstance(verdict, Allow):
            recent.append(SentRecord(channel=step.channel, at=now, cart_id=cart.id))
        return verdict

    return gate
