"""Send gates applied by the timer at send time."""

from __future__ import annotations

from cartback.core.engine import Allow, GateResult, SendGate, Skip
from cartback.core.flows import Step
from cartback.core.model import Cart, Channel, Contact, Enrollment, Store


def consent_gate(store: Store, cart: Cart, contact: Contact, enrollment: Enrollment) -> SendGate:
    """Marketing needs an address and consent on the step's channel, whatever the flow says."""

    def gate(step: Step, _planned: tuple[Step, ...]) -> GateResult:
        if step.channel is Channel.SMS:
            if not contact.phone:
                return Skip("address", "the contact has no phone number")
            if not contact.sms_marketing:
                return Skip("consent", "no SMS marketing consent")
        else:
            if not contact.email:
                return Skip("address", "the contact has no email address")
            if not contact.email_marketing:
                return Skip("consent", "no email marketing consent")
        return Allow()

    return gate
