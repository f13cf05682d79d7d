"""Replay one shopper's carts through the store's flows in virtual time.

The same pieces as the worker: the lineup picks the flow (core.lineup), core.engine.advance
fires each timer, services.gates.policy_gate applies the send policy, and services.compose
renders each message (through messages.MessageBook). What the worker reads from the database
is kept in memory: the shopper's recent sends (cooldowns and caps count across carts and
flows), their consent, and the opens, clicks, orders and opt-outs the engagement model draws.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from cartback.backtest.engagement import Engagement, StepRates, draw
from cartback.backtest.messages import MessageBook
from cartback.backtest.tally import FlowTally, Tally
from cartback.core.engine import Outcome, StepDecision, advance, may_enroll, plan_enrollment
from cartback.core.events import CheckoutUpdated, ConsentFlags, ShopEvent
from cartback.core.flows import Flow, Step, with_exclusions
from cartback.core.jurisdiction import RuleSet
from cartback.core.lineup import (
    CHECKOUT_UPDATED,
    PRIORITY_RULE,
    SUPPRESSION_RULE,
    AssignedFlow,
    Lineup,
)
from cartback.core.model import (
    Cart,
    CartStatus,
    Channel,
    ConsentView,
    Contact,
    Enrollment,
    EnrollmentState,
    StepOutcome,
    Store,
)
from cartback.core.policy import SentRecord, contact_zones
from cartback.core.storepolicy import store_exclusions, store_policy, store_rates
from cartback.core.timezones import phone_facts
from cartback.services.gates import policy_gate
from cartback.services.reports import Money
from cartback.simulate import MAX_WAKES, cart_at, cart_of, consent_of, contact_of

# The exit of a flow still waiting after MAX_WAKES timer firings.
WAKES_RULE = "timer.wakes"
_NOTHING_SEEN = StepOutcome()


@dataclass(frozen=True, slots=True)
class Setup:
    """Everything a replaying process needs; it is sent to each worker process once."""

    lineup: Lineup
    store: Store
    engagement: Engagement
    money: Money
    seed: int
    base_url: str = ""


@dataclass(slots=True)
class _Run:
    """One cart in one flow, as its enrollment row and what it has seen so far."""

    number: int
    assigned: AssignedFlow
    events: Sequence[ShopEvent]
    cart: Cart
    contact: Contact
    consent: dict[Channel, ConsentView]
    enrollment: Enrollment
    zone: ZoneInfo
    started: datetime
    # (when, step id, field): opens and clicks that conditions see from `when` on.
    engagement: list[tuple[datetime, str, str]] = field(default_factory=list)
    ordered_at: datetime | None = None
    ended_at: datetime | None = None
    wakes: int = 0
    # The contact's rule sets per channel, as policy_gate finds them: the contact is the same
    # at every wake.
    rules: dict[Channel, RuleSet] = field(default_factory=dict)


class Replayer:
    """Replays shoppers one after another into `tally`; one per process."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.policy = store_policy(setup.store.policy, setup.store.default_zone)
        # The store's exchange rates, as the worker reads them: flows with a base currency
        # compare carts in other currencies through them.
        self.exchange_rates = store_rates(setup.store.policy)
        # The store's discount exclusions join each flow's own, as the timer adds them.
        self._exclusions = store_exclusions(setup.store.policy)
        self._with_store_exclusions: dict[str, Flow] = {}
        self._consents: dict[ConsentFlags | None, tuple[datetime, dict[Channel, ConsentView]]] = {}
        self.book = MessageBook(setup.store, setup.base_url, setup.money)
        self.tally = Tally()
        self._rates: dict[tuple[str, str], StepRates] = {
            (assigned.flow.name, step.id): setup.engagement.rates_for(assigned.flow, step)
            for assigned in setup.lineup.flows
            for step in assigned.flow.steps
        }

    def rates(self, flow: Flow, step: Step) -> StepRates:
        return self._rates[(flow.name, step.id)]

    def shopper(self, histories: Sequence[Sequence[ShopEvent]]) -> None:
        """One shopper's carts, each a history of events about one cart token, in time order."""
        self.tally.shoppers += 1
        self._recent: list[SentRecord] = []
        # When the shopper opted out, per channel, as drawn.
        self._opt_outs: dict[Channel, datetime] = {}
        runs: list[_Run] = []
        starts: list[tuple[datetime, Sequence[ShopEvent]]] = []
        for events in histories:
            self.tally.carts += 1
            checkouts = [event for event in events if isinstance(event, CheckoutUpdated)]
            if not checkouts:
                self.tally.ignored += 1
                continue
            starts.append((min(event.occurred_at for event in checkouts), events))
        starts.sort(key=lambda item: item[0])
        # (when, order, what): a cart enters at its first checkout (order 0, before any timer
        # at the same instant), and a run's timer fires at its wake time (order 1). So when a
        # later cart asks whether the shopper is in another flow, the earlier carts' flows have
        # been replayed up to that moment.
        queue: list[tuple[datetime, int, int]] = [
            (started, 0, number) for number, (started, _) in enumerate(starts)
        ]
        heapq.heapify(queue)
        while queue:
            now, order, number = heapq.heappop(queue)
            if order == 0:
                run = self._enroll(number + 1, starts[number][1], now, runs)
                if run is None:
                    continue
                runs.append(run)
                wake_at = run.enrollment.wake_at
                index = len(runs) - 1
            else:
                index = number
                wake_at = self._wake(runs[index], now)
            if wake_at is not None:
                heapq.heappush(queue, (wake_at, 1, index))

    # --- entering a flow -------------------------------------------------------------------

    def _enroll(
        self, number: int, events: Sequence[ShopEvent], started: datetime, earlier: list[_Run]
    ) -> _Run | None:
        checkouts = sorted(
            (event for event in events if isinstance(event, CheckoutUpdated)),
            key=lambda event: event.occurred_at,
        )
        first, last = checkouts[0], checkouts[-1]
        contact = contact_of(first)
        # As ingest stores them: the timer reads these, and never parses the number again.
        facts = phone_facts(contact.phone) if contact.phone else None
        contact = replace(contact, id=1, phone_facts=facts)
        cart = replace(cart_of(last), id=number, contact_id=1)
        # A checkout sets off checkout and cart flows; a cart seen only before checkout, cart
        # flows (core.lineup).
        trigger = next(
            (e.trigger for e in checkouts if e.trigger == CHECKOUT_UPDATED), last.trigger
        )
        candidates = self.setup.lineup.triggered_by(trigger)
        willing = [
            a for a in candidates if may_enroll(a.flow, cart, contact, rates=self.exchange_rates)
        ]
        if not willing:
            self.tally.not_enrolled += 1
            return None
        chosen, *others = willing
        window = self.setup.lineup.suppression
        busy = [
            run
            for run in earlier
            if run.assigned.flow.name != chosen.flow.name
            and window.total_seconds() > 0
            and run.started > started - window
            and run.ended_at is None
        ]
        if busy:
            self.tally.flow(chosen.flow.name).not_enrolled[SUPPRESSION_RULE] += 1
            return None
        for other in others:
            self.tally.flow(other.flow.name).not_enrolled[PRIORITY_RULE] += 1
        flow = chosen.flow
        plan = plan_enrollment(flow, cart.token, last.occurred_at)
        enrollment = plan.enrollment(flow, id=number, store_id=self.setup.store.id, cart_id=number)
        tally = self.tally.flow(flow.name)
        tally.enrolled += 1
        tally.holdout += plan.holdout
        return _Run(
            number=number,
            assigned=chosen,
            events=sorted(events, key=lambda event: event.occurred_at),
            cart=cart,
            contact=contact,
            consent=self._consent(first),
            enrollment=enrollment,
            zone=contact_zones(contact, self.policy)[0],
            started=started,
        )

    def _consent(self, checkout: CheckoutUpdated) -> dict[Channel, ConsentView]:
        """consent_of(checkout), kept per consent flags: a checkout records its grants at one
        instant, so two checkouts with the same flags fold to the same views but for that
        instant (basis_since). Views holding any other instant are folded afresh."""
        kept = self._consents.get(checkout.consent)
        if kept is None:
            views = consent_of(checkout)
            at = checkout.occurred_at
            if all(
                view.basis_since in (None, at) and view.opted_out_at is None
                for view in views.values()
            ):
                self._consents[checkout.consent] = (at, views)
            return views
        at, views = kept
        if at == checkout.occurred_at:
            return dict(views)
        return {
            channel: view
            if view.basis_since is None
            else replace(view, basis_since=checkout.occurred_at)
            for channel, view in views.items()
        }

    # --- one timer firing ------------------------------------------------------------------

    def _wake(self, run: _Run, now: datetime) -> datetime | None:
        flow = self._with_store_exclusions.get(run.assigned.flow.name)
        if flow is None:
            flow = with_exclusions(run.assigned.flow, self._exclusions)
            self._with_store_exclusions[run.assigned.flow.name] = flow
        run.wakes += 1
        if run.wakes > MAX_WAKES:
            # As `flows test` does: a flow that keeps deferring is given up, and said so.
            self.tally.flow(flow.name).exits[WAKES_RULE] += 1
            self._left_before(flow, run.enrollment)
            run.ended_at = now
            return None
        # Only the events since the last wake: the earlier ones are in run.cart already.
        fresh = 0
        while fresh < len(run.events) and run.events[fresh].occurred_at <= now:
            fresh += 1
        if fresh:
            cart = cart_at(run.cart, run.events[:fresh], now)
            run.cart = replace(cart, id=run.number, contact_id=1)
            run.events = run.events[fresh:]
        ordered = run.ordered_at is not None and run.ordered_at <= now
        if ordered and run.cart.status is not CartStatus.ORDERED:
            run.cart = replace(run.cart, status=CartStatus.ORDERED)
        cart = run.cart
        enrollment = self._seen(run, now)
        consent = run.consent
        if self._opt_outs:
            consent = {
                channel: (
                    replace(view, suppressed=True, opted_out_at=self._opt_outs[channel])
                    if channel in self._opt_outs and self._opt_outs[channel] <= now
                    else view
                )
                for channel, view in run.consent.items()
            }
        # As the timer reads it: an opt-out received after this flow started ends it.
        opted_out = any(run.started <= at <= now for at in self._opt_outs.values())
        gate = policy_gate(
            cart,
            run.contact,
            enrollment,
            consent=consent,
            recent=self._recent,
            store_policy=self.policy,
            now=now,
            spacing=flow.spacing,
            rules=run.rules,
        )
        result = advance(
            flow,
            enrollment,
            cart,
            run.contact,
            now,
            opted_out=opted_out,
            gate=gate,
            rates=self.exchange_rates,
        )
        tally = self.tally.flow(flow.name)
        sends = {step.id: step for step in result.sends}
        for decision in result.decisions:
            if decision.outcome is Outcome.EXIT:
                tally.exits[result.enrollment.exit_reason or "exit"] += 1
                self._left_before(flow, enrollment)
            else:
                self._record(run, tally, decision, sends.get(decision.step_id or ""), now)
        run.enrollment = result.enrollment
        if result.enrollment.state is not EnrollmentState.ACTIVE:
            run.ended_at = now
            return None
        return result.enrollment.wake_at

    def _left_before(self, flow: Flow, enrollment: Enrollment) -> None:
        """A cart leaves the flow: every step it had not been decided on counts it, those
        still to come and those held for later (a text waiting for the morning)."""
        tally = self.tally.flow(flow.name)
        undecided = {step.id for step in flow.steps[enrollment.step_index :]}
        undecided.update(enrollment.holds)
        for step_id in undecided:
            tally.step(step_id).exits_before += 1

    def _seen(self, run: _Run, now: datetime) -> Enrollment:
        """The enrollment with the opens and clicks drawn for its messages up to `now`."""
        due = [item for item in run.engagement if item[0] <= now]
        if not due:
            return run.enrollment
        run.engagement = [item for item in run.engagement if item[0] > now]
        history = dict(run.enrollment.history)
        for _, step_id, what in due:
            seen = history.get(step_id, _NOTHING_SEEN)
            # Built directly: dataclasses.replace costs twice as much, for every message.
            history[step_id] = StepOutcome(
                sent=seen.sent,
                delivered=seen.delivered or what == "delivered",
                opened=seen.opened or what == "opened",
                clicked=seen.clicked or what == "clicked",
                skipped=seen.skipped,
                queued_at=seen.queued_at,
            )
        run.enrollment = replace(run.enrollment, history=history)
        return run.enrollment

    def _record(
        self,
        run: _Run,
        tally: FlowTally,
        decision: StepDecision,
        step: Step | None,
        now: datetime,
    ) -> None:
        outcome = decision.outcome
        if outcome is Outcome.COMPLETE:
            tally.completed += 1
            return
        if decision.step_id is None:
            return
        counts = tally.step(decision.step_id)
        if outcome is Outcome.DEFER:
            counts.defers[decision.rule or "defer"] += 1
        elif outcome is Outcome.SEND and step is not None:
            self._send(run, tally, step, now)
        else:
            counts.skips[decision.rule or str(outcome)] += 1

    def _send(self, run: _Run, tally: FlowTally, step: Step, now: datetime) -> None:
        flow = run.assigned.flow
        counts = tally.step(step.id)
        rendered = self.book.render(flow.name, run.cart, run.contact, run.enrollment, step, now)
        if rendered.error_rule is not None:
            counts.skips[rendered.error_rule] += 1
            # The worker writes no outbox row, so later decisions do not count this one.
            record = SentRecord(channel=step.channel, at=now, cart_id=run.cart.id)
            if record in self._recent:
                self._recent.remove(record)
            return
        counts.sent += 1
        counts.segments += rendered.segments or 0
        cost = self.book.cost(rendered, run.contact)
        if cost is None:
            counts.unpriced += 1
        else:
            counts.cost += cost
        self.tally.sent_at_hour(str(step.channel), now.astimezone(run.zone).hour)
        value = self.setup.money.convert(run.cart.value, run.cart.currency)
        if value is None:
            counts.unconverted += 1
            self.tally.unconverted[run.cart.currency] += 1
        else:
            counts.value += value
            counts.value_squares += value * value
        self._engage(run, step, now, value or Decimal(0))

    def _engage(self, run: _Run, step: Step, now: datetime, value: Decimal) -> None:
        """Draw what the shopper does with this message and schedule its effects."""
        rates = self.rates(run.assigned.flow, step)
        delays = self.setup.engagement.delays
        seed, token = self.setup.seed, run.cart.token
        counts = self.tally.flow(run.assigned.flow.name).step(step.id)
        run.engagement.append((now, step.id, "delivered"))
        if step.channel is Channel.EMAIL and rates.open is not None:
            opened = draw(seed, token, step.id, "open") < float(rates.open)
            # Click rates are per recipient; given an open, a click is click ÷ open.
            share = rates.click / rates.open if rates.open else Decimal(0)
            clicked = opened and draw(seed, token, step.id, "click") < float(share)
            if opened:
                counts.opened += 1
                run.engagement.append((now + delays.open, step.id, "opened"))
        else:
            clicked = draw(seed, token, step.id, "click") < float(rates.click)
        if clicked:
            counts.clicked += 1
            run.engagement.append((now + delays.click, step.id, "clicked"))
            if run.ordered_at is None and draw(seed, token, step.id, "order") < float(
                rates.recover
            ):
                counts.recovered += 1
                counts.recovered_value += value
                run.ordered_at = now + delays.click + delays.order
        if draw(seed, token, step.id, "opt_out") < float(rates.opt_out):
            counts.opted_out += 1
            at = now + delays.opt_out
            self._opt_outs[step.channel] = min(self._opt_outs.get(step.channel, at), at)
