"""Run one cart through a flow in virtual time, with the same core the worker uses.

`cartback flows test` prints the result; nothing is stored and nothing is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from cartback.core.consent import ConsentEvent, ConsentSource, fold
from cartback.core.engine import Outcome, advance, may_enroll, plan_enrollment
from cartback.core.events import CartEmptied, CheckoutUpdated, OrderPlaced, ShopEvent
from cartback.core.flows import Flow, with_exclusions
from cartback.core.model import (
    Cart,
    CartStatus,
    Channel,
    ConsentView,
    Contact,
    Enrollment,
    EnrollmentState,
    Purpose,
    Store,
    format_duration,
)
from cartback.core.policy import SentRecord
from cartback.core.storepolicy import store_exclusions, store_policy
from cartback.services.compose import UNIQUE_POOL, ComposeError, compose
from cartback.services.gates import policy_gate

MAX_WAKES = 1000


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: datetime
    step_id: str | None
    outcome: str
    reason: str
    rule: str | None = None
    channel: str | None = None
    to: str | None = None
    subject: str | None = None
    text: str | None = None
    encoding: str | None = None
    segments: int | None = None


def timeline(
    flow: Flow, store: Store, events: Sequence[ShopEvent], *, base_url: str = ""
) -> list[TimelineEntry]:
    flow = with_exclusions(flow, store_exclusions(store.policy))
    checkouts = [event for event in events if isinstance(event, CheckoutUpdated)]
    if not checkouts:
        raise ValueError("the events need at least one checkout.updated")
    first = min(checkouts, key=lambda event: event.occurred_at)
    last_activity = max(event.occurred_at for event in checkouts)
    contact = _contact(first)
    cart = _cart(max(checkouts, key=lambda event: event.occurred_at))
    entries: list[TimelineEntry] = []
    if not may_enroll(flow, cart, contact):
        return [
            TimelineEntry(
                first.occurred_at, None, "not_enrolled", "the flow's entry rules exclude this cart"
            )
        ]
    plan = plan_enrollment(flow, cart.token, last_activity)
    enrollment = Enrollment(
        id=1,
        store_id=store.id,
        cart_id=cart.id,
        flow_name=flow.name,
        flow_version=flow.version,
        step_index=0,
        state=EnrollmentState.ACTIVE,
        abandoned_at=plan.abandoned_at,
        wake_at=plan.wake_at,
        variant=plan.variant,
        holdout=plan.holdout,
        held_channel=plan.held_channel,
    )
    entries.append(
        TimelineEntry(
            plan.abandoned_at,
            None,
            "enrolled",
            f"abandoned after {format_duration(flow.abandon_after)} idle; "
            f"variant {plan.variant or '-'}" + ("; holdout group" if plan.holdout else ""),
        )
    )
    consent = _consent(first)
    recent: list[SentRecord] = []
    policy = store_policy(store.policy, store.default_zone)
    for _ in range(MAX_WAKES):
        now = enrollment.wake_at
        if now is None or enrollment.state is not EnrollmentState.ACTIVE:
            break
        cart = _cart_at(cart, events, now)
        gate = policy_gate(
            cart,
            contact,
            enrollment,
            consent=consent,
            recent=recent,
            store_policy=policy,
            now=now,
        )
        result = advance(flow, enrollment, cart, contact, now, gate=gate)
        sends = {step.id: step for step in result.sends}
        for decision in result.decisions:
            step = sends.get(decision.step_id or "")
            entry = TimelineEntry(
                now, decision.step_id, str(decision.outcome), decision.reason, decision.rule
            )
            if decision.outcome is Outcome.SEND and step is not None:
                try:
                    row = compose(
                        store, cart, contact, enrollment, step, now, base_url, codes=_sample_code
                    ).outbox
                except ComposeError as error:
                    entry = replace(entry, outcome="skip", rule=error.rule, reason=str(error))
                else:
                    entry = replace(
                        entry,
                        channel=row["channel"],
                        to=row["to_address"],
                        subject=row["subject"],
                        text=row["body"],
                        encoding=row["encoding"],
                        segments=row["segments"],
                    )
            entries.append(entry)
        enrollment = result.enrollment
    return entries


def _contact(event: CheckoutUpdated) -> Contact:
    info = event.contact
    consent = event.consent
    return Contact(
        id=1,
        store_id=1,
        phone=info.phone,
        email=info.email,
        first_name=info.first_name,
        last_name=info.last_name,
        locale=info.locale,
        zone=info.zone,
        country=info.country,
        region=info.region,
        sms_marketing=bool(consent and consent.sms_marketing),
        email_marketing=bool(consent and consent.email_marketing),
        tags=info.tags,
    )


def _sample_code(pool: str, _cart: Cart) -> str:
    """The simulator hands out no real codes; it shows where a pooled or unique one would go."""
    return "UNIQUE-SAMPLE" if pool == UNIQUE_POOL else f"{pool.upper()}-SAMPLE"


def _consent(event: CheckoutUpdated) -> dict[Channel, ConsentView]:
    """The consent ledger the checkout would write, folded as the worker folds it."""
    flags = event.consent
    granted: list[ConsentEvent] = []
    if flags is not None:
        wanted = (
            (Channel.SMS, Purpose.MARKETING, flags.sms_marketing),
            (Channel.EMAIL, Purpose.MARKETING, flags.email_marketing),
            (Channel.SMS, Purpose.CART_REMINDERS, flags.cart_reminders and flags.sms_marketing),
        )
        granted = [
            ConsentEvent(
                contact_id=1,
                channel=channel,
                purpose=purpose,
                granted=True,
                source=ConsentSource.CHECKOUT,
                at=event.occurred_at,
                wording=flags.wording,
                double_opt_in_at=event.occurred_at if flags.double_opt_in else None,
            )
            for channel, purpose, yes in wanted
            if yes
        ]
    return {channel: fold(granted, channel) for channel in Channel}


def _cart(event: CheckoutUpdated) -> Cart:
    return Cart(
        id=1,
        store_id=1,
        token=event.cart_token,
        contact_id=1,
        lines=event.lines,
        value=event.value,
        currency=event.currency,
        restore_url=event.restore_url,
        status=CartStatus.OPEN if event.lines else CartStatus.EMPTIED,
        updated_at=event.occurred_at,
        tags=event.tags,
    )


def _cart_at(cart: Cart, events: Sequence[ShopEvent], now: datetime) -> Cart:
    """The cart as the worker would see it at `now`: newest content, and any order or emptying."""
    for event in sorted(events, key=lambda item: item.occurred_at):
        if event.occurred_at > now:
            break
        if isinstance(event, CheckoutUpdated) and event.occurred_at >= cart.updated_at:
            cart = replace(
                _cart(event),
                status=cart.status if cart.status is CartStatus.ORDERED else CartStatus.OPEN,
            )
        elif isinstance(event, OrderPlaced):
            cart = replace(cart, status=CartStatus.ORDERED)
        elif isinstance(event, CartEmptied):
            cart = replace(cart, status=CartStatus.EMPTIED, lines=())
    return cart
