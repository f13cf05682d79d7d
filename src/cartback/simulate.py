"""Run one cart through a flow in virtual time, with the same core the worker uses.

`cartback flows test` prints the result; nothing is stored and nothing is sent. What the shopper
does along the way (opens, clicks, an order, SMS replies) comes in as an `Engagement`, so each
condition can be seen taking either branch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cartback.core.conditions import build_facts
from cartback.core.consent import ConsentEvent, ConsentSource, fold
from cartback.core.engine import LATE_RULE, Advance, Outcome, advance, may_enroll, plan_enrollment
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
    StepOutcome,
    Store,
    format_duration,
)
from cartback.core.policy import SentRecord
from cartback.core.render import help_reply, opt_in_confirmation, opt_out_confirmation
from cartback.core.replies import ReplyKind, classify_reply
from cartback.core.storepolicy import store_exclusions, store_policy, store_rates
from cartback.postcodes import postal_zones
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
    # The step's `when`, the branch it took (None: not evaluated, e.g. a late step) and the
    # value of each fact it read.
    condition: str | None = None
    branch: bool | None = None
    facts: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class ShopperReply:
    """An SMS the shopper sends, `after` the cart counted as abandoned."""

    text: str
    after: timedelta


@dataclass(frozen=True, slots=True)
class Engagement:
    """What the shopper does during the flow. Opens and clicks happen as soon as that step's
    message is sent; the order and the replies at their time after abandonment."""

    opened: frozenset[str] = frozenset()
    clicked: frozenset[str] = frozenset()
    ordered_after: timedelta | None = None
    replies: tuple[ShopperReply, ...] = field(default=())

    def problems(self, flow: Flow) -> list[str]:
        """Why this engagement does not fit the flow, one line per problem; [] when it does."""
        steps = {step.id: step for step in flow.steps}
        known = ", ".join(steps)
        found: list[str] = []
        for flag, names in (("--opened", self.opened), ("--clicked", self.clicked)):
            for name in sorted(names):
                step = steps.get(name)
                if step is None:
                    found.append(f"{flag} {name}: the flow has no such step (steps: {known})")
                elif flag == "--opened" and step.channel is Channel.SMS:
                    found.append(f"--opened {name}: an SMS has no opens; use --clicked {name}")
        times = [("--ordered-at", self.ordered_after)] if self.ordered_after is not None else []
        times += [("--at", reply.after) for reply in self.replies]
        for flag, after in times:
            if after < timedelta(0):
                found.append(f"{flag}: {format_duration(after)} is before the cart was abandoned")
        return found


NO_ENGAGEMENT = Engagement()


@dataclass(frozen=True, slots=True)
class _Action:
    at: datetime
    reply: ShopperReply | None  # None: the order


def timeline(
    flow: Flow,
    store: Store,
    events: Sequence[ShopEvent],
    *,
    base_url: str = "",
    engagement: Engagement = NO_ENGAGEMENT,
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
    if not may_enroll(flow, cart, contact, rates=store_rates(store.policy)):
        return [
            TimelineEntry(
                first.occurred_at, None, "not_enrolled", "the flow's entry rules exclude this cart"
            )
        ]
    plan = plan_enrollment(flow, cart.token, last_activity)
    enrollment = plan.enrollment(flow, id=1, store_id=store.id, cart_id=cart.id)
    entries.append(
        TimelineEntry(
            plan.abandoned_at,
            None,
            "enrolled",
            f"abandoned after {format_duration(flow.abandon_after)} idle; "
            f"variant {plan.variant or '-'}" + ("; holdout group" if plan.holdout else ""),
        )
    )
    ledger = _consent_ledger(first)
    consent = _fold(ledger)
    opted_out = False
    recent: list[SentRecord] = []
    policy = store_policy(store.policy, store.default_zone)
    actions = _actions(engagement, plan.abandoned_at)
    if engagement.ordered_after is not None:
        events = [*events, _order(cart, plan.abandoned_at + engagement.ordered_after)]
    for _ in range(MAX_WAKES):
        wake = enrollment.wake_at
        if wake is None or enrollment.state is not EnrollmentState.ACTIVE:
            break
        now = wake
        if actions and actions[0].at <= wake:
            # The shopper acts first; the flow looks again at once, as the worker would.
            action = actions.pop(0)
            now = action.at
            if action.reply is None:
                entries.append(_ordered_entry(engagement, now))
            else:
                entry, event = _reply(action.reply, now, store, contact)
                entries.append(entry)
                if event is not None:
                    ledger.append(event)
                    consent = _fold(ledger)
                    opted_out = any(view.opted_out_at is not None for view in consent.values())
                    contact = replace(
                        contact,
                        sms_marketing=consent[Channel.SMS].marketing,
                        email_marketing=consent[Channel.EMAIL].marketing,
                    )
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
        result = advance(
            flow, enrollment, cart, contact, now, opted_out=opted_out, gate=gate, rates=policy.rates
        )
        sends = {step.id: step for step in result.sends}
        sent: list[str] = []
        for decision in result.decisions:
            step = sends.get(decision.step_id or "")
            entry = TimelineEntry(
                now, decision.step_id, str(decision.outcome), decision.reason, decision.rule
            )
            entry = _with_branch(entry, flow, result, cart, contact)
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
                    sent.append(step.id)
            entries.append(entry)
        enrollment = result.enrollment
        for step_id in sent:
            enrollment, shown = _engage(enrollment, step_id, engagement, now)
            entries.extend(shown)
    entries.extend(_unused(engagement, entries))
    return entries


def _unused(engagement: Engagement, entries: Sequence[TimelineEntry]) -> list[TimelineEntry]:
    """A note for each open or click asked for on a message that was never sent."""
    done = {(entry.step_id, entry.outcome) for entry in entries}
    last = entries[-1].at
    return [
        TimelineEntry(
            last,
            step_id,
            "note",
            f"{step_id} was not sent, so --{action} {step_id} changed nothing",
        )
        for action, names in (("opened", engagement.opened), ("clicked", engagement.clicked))
        for step_id in sorted(names)
        if (step_id, action) not in done
    ]


def _actions(engagement: Engagement, abandoned_at: datetime) -> list[_Action]:
    found = [_Action(abandoned_at + reply.after, reply) for reply in engagement.replies]
    if engagement.ordered_after is not None:
        found.append(_Action(abandoned_at + engagement.ordered_after, None))
    # Stable: at the same instant, replies keep their order and the order comes last.
    return sorted(found, key=lambda action: action.at)


def _order(cart: Cart, at: datetime) -> OrderPlaced:
    return OrderPlaced(
        event_id="flows-test-order",
        occurred_at=at,
        order_id="flows-test-order",
        value=cart.value,
        currency=cart.currency,
        cart_token=cart.token,
    )


def _ordered_entry(engagement: Engagement, at: datetime) -> TimelineEntry:
    after = format_duration(engagement.ordered_after or timedelta(0))
    return TimelineEntry(
        at, None, "ordered", f"the shopper places an order ({after} after abandonment)"
    )


def _reply(
    reply: ShopperReply, at: datetime, store: Store, contact: Contact
) -> tuple[TimelineEntry, ConsentEvent | None]:
    """The reply as the inbound SMS service handles it: classified, consent recorded for STOP
    and START, and the answer the shopper gets."""
    found = classify_reply(reply.text)
    locale = contact.locale or store.default_locale
    said = f"the shopper replies {reply.text!r}: {found.kind.value.upper()} ({found.reason})"
    event = None
    answer: str | None = None
    if found.kind is ReplyKind.STOP:
        event = _keyword_consent(at, granted=False, wording=f"reply {found.keyword or 'STOP'}")
        answer = opt_out_confirmation(store.brand, locale)
        said += "; SMS marketing consent withdrawn"
    elif found.kind is ReplyKind.START and found.confident:
        event = _keyword_consent(at, granted=True, wording=f"reply {found.keyword or 'START'}")
        answer = opt_in_confirmation(store.brand, locale)
        said += "; SMS marketing consent given again"
    elif found.kind is ReplyKind.HELP:
        answer = help_reply(store.brand, locale, store.support_contact)
        said += "; the flow goes on"
    else:
        said += "; recorded for the store, the flow goes on"
    entry = TimelineEntry(at, None, "replied", said, channel="sms" if answer else None, text=answer)
    return entry, event


def _keyword_consent(at: datetime, *, granted: bool, wording: str) -> ConsentEvent:
    return ConsentEvent(
        contact_id=1,
        channel=Channel.SMS,
        purpose=Purpose.MARKETING,
        granted=granted,
        source=ConsentSource.KEYWORD_REPLY,
        at=at,
        wording=wording,
    )


def _engage(
    enrollment: Enrollment, step_id: str, engagement: Engagement, at: datetime
) -> tuple[Enrollment, list[TimelineEntry]]:
    """Record the shopper's open and click of a message just sent, as tracking would."""
    opened, clicked = step_id in engagement.opened, step_id in engagement.clicked
    if not (opened or clicked):
        return enrollment, []
    history = dict(enrollment.history)
    outcome = history.get(step_id, StepOutcome(sent=True, queued_at=at))
    history[step_id] = replace(
        outcome, delivered=True, opened=outcome.opened or opened, clicked=outcome.clicked or clicked
    )
    shown = [
        TimelineEntry(at, step_id, action, f"the shopper {action} {step_id} (--{action})")
        for action, did in (("opened", opened), ("clicked", clicked))
        if did
    ]
    return replace(enrollment, history=history), shown


def _with_branch(
    entry: TimelineEntry, flow: Flow, result: Advance, cart: Cart, contact: Contact
) -> TimelineEntry:
    """The step's condition, the branch it took and the facts that decided it. A late step is
    skipped before its condition is read, so it has no branch."""
    if entry.step_id is None:
        return entry
    step = flow.step(entry.step_id)
    if step.when is None:
        return entry
    if entry.rule == LATE_RULE:
        return replace(entry, condition=step.when.source)
    facts = build_facts(
        cart, contact, result.enrollment.variant, result.enrollment.history, flow.exclusions
    )
    return replace(
        entry,
        condition=step.when.source,
        branch=entry.rule != "when",
        facts=step.when.facts_read(facts),
    )


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
        postal_zones=postal_zones(info.country, info.region, info.postal_code),
        sms_marketing=bool(consent and consent.sms_marketing),
        email_marketing=bool(consent and consent.email_marketing),
        tags=info.tags,
    )


def _sample_code(pool: str, _cart: Cart) -> str:
    """The simulator hands out no real codes; it shows where a pooled or unique one would go."""
    return "UNIQUE-SAMPLE" if pool == UNIQUE_POOL else f"{pool.upper()}-SAMPLE"


def _consent_ledger(event: CheckoutUpdated) -> list[ConsentEvent]:
    """The consent ledger the checkout would write."""
    flags = event.consent
    if flags is None:
        return []
    wanted = (
        (Channel.SMS, Purpose.MARKETING, flags.sms_marketing),
        (Channel.EMAIL, Purpose.MARKETING, flags.email_marketing),
        (Channel.SMS, Purpose.CART_REMINDERS, flags.cart_reminders and flags.sms_marketing),
    )
    return [
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


def _fold(ledger: Sequence[ConsentEvent]) -> dict[Channel, ConsentView]:
    """The ledger folded as the worker folds it."""
    return {channel: fold(ledger, channel) for channel in Channel}


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


# The backtest (cartback.backtest) replays many carts with these same readings of the events.
contact_of = _contact
cart_of = _cart
cart_at = _cart_at
sample_code = _sample_code


def consent_of(event: CheckoutUpdated) -> dict[Channel, ConsentView]:
    return _fold(_consent_ledger(event))
