"""What the engine's fast paths must keep: a wake builds the next enrollment field by field, so
every field it does not decide comes through unchanged; the steps' facts and the kept cart and
contact facts are those read afresh."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import timedelta
from decimal import Decimal

from tests.unit.test_engine_holds import ABANDONED, CART, CONTACT, DEFAULT_LIKE

from cartback.core.conditions import build_facts
from cartback.core.engine import Outcome, advance, plan_enrollment
from cartback.core.jurisdiction import RuleSet, resolve_rules
from cartback.core.model import CartLine, Channel, Enrollment, EnrollmentState, StepOutcome

# Decided by each wake; every other field is the enrollment's own.
DECIDED = {"step_index", "state", "wake_at", "history", "holds", "released"}
KEPT = {
    "id",
    "store_id",
    "cart_id",
    "flow_name",
    "flow_version",
    "abandoned_at",
    "variant",
    "holdout",
    "exit_reason",
    "held_channel",
}


def test_a_wake_keeps_every_field_it_does_not_decide() -> None:
    # A new Enrollment field must be copied in engine._Walk.result, then named here.
    assert {field.name for field in fields(Enrollment)} == DECIDED | KEPT
    before = Enrollment(
        id=41,
        store_id=42,
        cart_id=43,
        flow_name=DEFAULT_LIKE.name,
        flow_version="v9",
        step_index=0,
        state=EnrollmentState.ACTIVE,
        abandoned_at=ABANDONED,
        wake_at=ABANDONED + timedelta(minutes=15),
        variant="b",
        exit_reason="kept as it was",
        held_channel="email",
        released=frozenset({"elsewhere"}),
    )
    result = advance(DEFAULT_LIKE, before, CART, CONTACT, ABANDONED + timedelta(minutes=15))
    assert [decision.outcome for decision in result.decisions] == [Outcome.SEND]
    after = result.enrollment
    for name in KEPT:
        assert getattr(after, name) == getattr(before, name), name
    assert after.step_index == 1 and after.history["sms1"].sent
    assert after.released == frozenset({"elsewhere"})


def test_a_plan_starts_the_enrollment_it_describes() -> None:
    plan = plan_enrollment(DEFAULT_LIKE, "tok", ABANDONED)
    enrollment = plan.enrollment(DEFAULT_LIKE, id=5, store_id=6, cart_id=7)
    assert (enrollment.id, enrollment.store_id, enrollment.cart_id) == (5, 6, 7)
    assert enrollment.state is EnrollmentState.ACTIVE and enrollment.step_index == 0
    assert (enrollment.abandoned_at, enrollment.wake_at) == (plan.abandoned_at, plan.wake_at)
    assert (enrollment.variant, enrollment.holdout, enrollment.held_channel) == (
        plan.variant,
        plan.holdout,
        plan.held_channel,
    )
    assert (enrollment.flow_name, enrollment.flow_version) == (
        DEFAULT_LIKE.name,
        DEFAULT_LIKE.version,
    )


def test_facts_follow_the_cart_and_contact_in_hand() -> None:
    history = {"sms1": StepOutcome(sent=True, opened=True, queued_at=ABANDONED)}
    first = build_facts(CART, CONTACT, None, history)
    assert first["sms1"] == {
        "sent": True,
        "delivered": False,
        "opened": True,
        "clicked": False,
        "skipped": False,
    }
    # Another cart and contact (equal or not) right after: their own facts, not the kept ones.
    bigger = replace(CART, value=Decimal("999"), lines=(CartLine("Tent", 3, Decimal("333")),))
    returning = replace(CONTACT, orders_count=2)
    second = build_facts(bigger, returning, None, {})
    cart, contact = second["cart"], second["contact"]
    assert isinstance(cart, dict) and isinstance(contact, dict)
    assert (cart["value"], cart["item_count"]) == (Decimal("999"), Decimal(3))
    assert contact["returning"] is True
    assert build_facts(CART, CONTACT, None, {})["cart"] == first["cart"]


def test_store_overrides_are_read_again_whenever_they_change() -> None:
    def rules(overrides: tuple[dict[str, object], ...]) -> RuleSet:
        return resolve_rules(
            phone_country="US",
            phone_region="NY",
            ship_country="US",
            ship_region="NY",
            channel=Channel.SMS,
            store_overrides=overrides,
        )

    def window(hours: str) -> tuple[dict[str, object], ...]:
        return ({"name": "us.quiet_hours", "window": {"mon-sun": hours}},)

    plain, tight, tighter = rules(()), rules(window("10:00-18:00")), rules(window("11:00-17:00"))
    assert len({plain, tight, tighter}) == 3
    assert rules(window("10:00-18:00")) == tight and rules(()) == plain
