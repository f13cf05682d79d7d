"""A flow's channel holdout: a hashed share of its carts gets every step but one channel's."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from tests.unit.test_engine_timing import CART, CONTACT

from cartback.core.engine import CHANNEL_HOLDOUT_RULE, Outcome, advance, plan_enrollment
from cartback.core.flows import FlowError, parse_flow
from cartback.core.model import Enrollment, EnrollmentState

SOURCE = """\
name: split
abandon_after: 10m
holdout: 10%
channel_holdout: {channel: sms, percent: 20%}
variants: [{name: A, weight: 1}, {name: B, weight: 1}]
steps:
  - {id: sms1, at: 15m, channel: sms, body: one}
  - {id: email1, at: 1h, channel: email, subject: s, body: two}
"""
FLOW = parse_flow(SOURCE, "split.yaml")
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_the_share_is_hashed_stable_and_independent_of_the_holdout() -> None:
    plans = [plan_enrollment(FLOW, f"cart-{i}", START) for i in range(4000)]
    held = [p for p in plans if p.held_channel == "sms"]
    assert 0.17 < len(held) / len(plans) < 0.23
    # The full holdout draws its own hash: about 10 % of the SMS-held carts are in it too.
    assert 0.05 < sum(p.holdout for p in held) / len(held) < 0.15
    assert plan_enrollment(FLOW, "cart-7", START) == plans[7]


def test_a_held_cart_skips_sms_with_a_named_rule_and_still_gets_email() -> None:
    token = next(
        f"cart-{i}"
        for i in range(100)
        if plan_enrollment(FLOW, f"cart-{i}", START).held_channel == "sms"
        and not plan_enrollment(FLOW, f"cart-{i}", START).holdout
    )
    plan = plan_enrollment(FLOW, token, START)
    state = Enrollment(
        id=1,
        store_id=1,
        cart_id=1,
        flow_name=FLOW.name,
        flow_version=FLOW.version,
        step_index=0,
        state=EnrollmentState.ACTIVE,
        abandoned_at=plan.abandoned_at,
        wake_at=plan.wake_at,
        variant=plan.variant,
        held_channel=plan.held_channel,
    )
    first = advance(FLOW, state, replace(CART, token=token), CONTACT, plan.wake_at)
    assert [(d.step_id, d.outcome, d.rule) for d in first.decisions] == [
        ("sms1", Outcome.HOLDOUT, CHANNEL_HOLDOUT_RULE)
    ]
    assert first.sends == ()
    later = advance(FLOW, first.enrollment, CART, CONTACT, plan.abandoned_at + timedelta(hours=1))
    assert [s.id for s in later.sends] == ["email1"]


def test_a_promoted_variant_goes_to_every_new_cart() -> None:
    variants = {plan_enrollment(FLOW, f"c{i}", START, promoted="B").variant for i in range(50)}
    assert variants == {"B"}
    # A name the flow does not have is ignored: the hash decides.
    drawn = {plan_enrollment(FLOW, f"c{i}", START, promoted="Z").variant for i in range(50)}
    assert drawn == {"A", "B"}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("{channel: push, percent: 10%}", "channel_holdout.channel: expected sms or email"),
        ("{channel: sms, percent: 80%}", "channel_holdout.percent: 80% is out of range"),
        ("{channel: sms, share: 10%}", "channel_holdout.share"),
    ],
)
def test_a_bad_channel_holdout_names_its_field(setting: str, message: str) -> None:
    text = SOURCE.replace("{channel: sms, percent: 20%}", setting)
    with pytest.raises(FlowError) as caught:
        parse_flow(text, "split.yaml")
    assert message in str(caught.value)


def test_without_the_setting_no_cart_is_held_from_a_channel() -> None:
    flow = parse_flow(SOURCE.replace("channel_holdout: {channel: sms, percent: 20%}\n", ""), "x")
    assert flow.channel_holdout is None
    assert {plan_enrollment(flow, f"c{i}", START).held_channel for i in range(200)} == {None}
    assert FLOW.channel_holdout is not None and FLOW.channel_holdout.percent == Decimal(20)
