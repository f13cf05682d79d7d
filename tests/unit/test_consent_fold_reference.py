"""The fold makes each grant's changes in one copy of the view; it must fold every ledger to
exactly the view that applying the changes one by one gives (the reference below)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from cartback.core import consent as c
from cartback.core.consent import ConsentEvent, ConsentSource, fold
from cartback.core.model import Channel, ConsentView, Purpose

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _reference_with_cart_reminders(state: c._State) -> c._State:
    view = state.view
    allowed = (
        not view.suppressed
        and state.cart_choice is not False
        and (view.marketing or state.cart_choice is True)
    )
    return replace(state, view=replace(view, cart_reminders=allowed))


def _reference_grant(state: c._State, event: ConsentEvent) -> c._State:
    view = state.view
    if event.purpose is Purpose.TRANSACTIONAL:
        return replace(state, view=replace(view, transactional=True))
    if view.suppressed and event.source not in c.SHOPPER_OPT_IN_SOURCES:
        return state
    if view.suppressed and event.shop_time_clamped:
        return state
    if view.suppressed and state.last_opt_out is not None and event.at <= state.last_opt_out:
        return state
    view = replace(view, suppressed=False, opted_out_at=None)
    if not c._keeps_current_basis(view, event):
        view = replace(view, basis=event.basis, basis_since=event.at)
    if event.purpose is Purpose.MARKETING:
        view = replace(view, marketing=True, double_opt_in=event.has_double_opt_in_evidence)
        return _reference_with_cart_reminders(replace(state, view=view, last_opt_out=None))
    return _reference_with_cart_reminders(c._State(view, cart_choice=True))


def _reference_revoke(state: c._State, event: ConsentEvent) -> c._State:
    if event.purpose is Purpose.MARKETING or event.source in c.OPT_OUT_SOURCES:
        return c._opt_out(state, event).state
    if event.purpose is Purpose.TRANSACTIONAL:
        return replace(state, view=replace(state.view, transactional=False))
    return _reference_with_cart_reminders(replace(state, cart_choice=False))


def _reference_fold(events: list[ConsentEvent], channel: Channel) -> ConsentView:
    state = c._State(ConsentView(channel=channel))
    for event in c._ledger_order(events):
        if event.channel is channel:
            grant = event.granted
            state = _reference_grant(state, event) if grant else _reference_revoke(state, event)
    return state.view


@st.composite
def ledgers(draw: st.DrawFn) -> list[ConsentEvent]:
    events = []
    for index in range(draw(st.integers(0, 12))):
        at = T0 + timedelta(minutes=draw(st.integers(0, 5000)))
        received = at + timedelta(minutes=draw(st.sampled_from([0, 0, 3, -2])))
        events.append(
            ConsentEvent(
                id=index + 1,
                contact_id=1,
                channel=draw(st.sampled_from(list(Channel))),
                purpose=draw(st.sampled_from(list(Purpose))),
                granted=draw(st.booleans()),
                source=draw(st.sampled_from(list(ConsentSource))),
                at=at,
                received_at=received,
                basis=draw(
                    st.sampled_from(
                        [None, "express", "implied_purchase", "implied_inquiry", "soft_opt_in"]
                    )
                ),
                double_opt_in_at=at if draw(st.booleans()) else None,
                shop_time_clamped=draw(st.booleans()),
            )
        )
    return events


@settings(max_examples=600, deadline=None)
@given(events=ledgers())
def test_the_fold_equals_applying_each_change_in_turn(events: list[ConsentEvent]) -> None:
    for channel in Channel:
        assert fold(events, channel) == _reference_fold(events, channel)
