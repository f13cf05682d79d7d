"""The backtest's engagement model: published defaults, overrides from a file or options with
the place of every mistake, and seeded draws that are reproducible and fair."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from cartback.backtest.engagement import (
    DEFAULT_EMAIL,
    DEFAULT_SMS,
    Engagement,
    EngagementError,
    draw,
    load_engagement,
)
from cartback.core.flows import Step, default_flow_path, load_flow

FLOW = load_flow(default_flow_path())


def _step(step_id: str) -> Step:
    return next(step for step in FLOW.steps if step.id == step_id)


def test_defaults_follow_the_rank_of_the_step_on_its_channel() -> None:
    model = Engagement()
    sms = [model.rates_for(FLOW, step) for step in FLOW.steps if step.channel == "sms"]
    emails = [model.rates_for(FLOW, step) for step in FLOW.steps if step.channel == "email"]
    assert [r.click for r in sms] == list(DEFAULT_SMS.click)
    assert [r.open for r in emails] == list(DEFAULT_EMAIL.open)
    # Later messages of a channel do worse, as the benchmarks found.
    assert sms[0].click > sms[1].click > sms[2].click
    assert emails[0].open > emails[1].open > emails[2].open  # type: ignore[operator]
    assert all(r.open is None for r in sms)
    assert sms[0].recovery == Decimal("0.36") * Decimal("0.287")


def test_a_list_repeats_its_last_value_for_later_steps() -> None:
    model = load_engagement("sms:\n  click: [0.4, 0.1]\n", "rates.yaml")
    clicks = [model.rates_for(FLOW, s).click for s in FLOW.steps if s.channel == "sms"]
    assert clicks == [Decimal("0.4"), Decimal("0.1"), Decimal("0.1")]


def test_options_apply_after_the_file_and_steps_after_channels() -> None:
    model = load_engagement(
        "email:\n  open: 0.5\n  click: '10%'\n"
        "steps:\n  email2: {click: 0.2}\ndelays: {order: 2h}\n",
        "rates.yaml",
        ["email.open=0.6", "steps.sms3.recover=0.5", "sms.opt_out=0.02,0.03"],
    )
    email1, email2 = model.rates_for(FLOW, _step("email1")), model.rates_for(FLOW, _step("email2"))
    assert (email1.open, email1.click) == (Decimal("0.6"), Decimal("0.1"))
    assert email2.click == Decimal("0.2")
    sms1, sms3 = model.rates_for(FLOW, _step("sms1")), model.rates_for(FLOW, _step("sms3"))
    assert sms3.recover == Decimal("0.5") and sms1.recover == DEFAULT_SMS.recover[0]
    assert (sms1.opt_out, sms3.opt_out) == (Decimal("0.02"), Decimal("0.03"))
    assert model.delays.order == timedelta(hours=2)
    assert model.delays.open == Engagement().delays.open


def test_every_mistake_in_a_file_is_named_with_its_line() -> None:
    text = (
        "sms:\n  click: 2\n  clik: 0.1\nemail:\n  open: [0.5, x]\n"
        "steps:\n  sms1: {when: 1}\nfoo: 1\n"
    )
    with pytest.raises(EngagementError) as caught:
        load_engagement(text, "rates.yaml")
    assert set(caught.value.issues) == {
        "rates.yaml:2: sms.click: 2 is not between 0 and 1",
        "rates.yaml:3: sms.clik: unknown rate; expected one of click, recover, opt_out",
        "rates.yaml:5: email.open: 'x' is not a number",
        "rates.yaml:7: steps.sms1.when: unknown rate; expected one of click, recover, opt_out, "
        "open",
        "rates.yaml:8: foo: unknown key; expected sms, email, steps or delays",
    }


def test_a_bad_option_is_named() -> None:
    with pytest.raises(EngagementError) as caught:
        load_engagement(None, "-", ["sms.click", "delays.open=soon"])
    assert caught.value.issues[0].startswith("--rate: 'sms.click': expected key=value")
    assert caught.value.issues[1].startswith("--rate: delays.open:")


def test_an_email_cannot_be_clicked_more_often_than_opened() -> None:
    model = load_engagement(None, "-", ["steps.email1.click=0.7"])
    with pytest.raises(EngagementError, match=r"steps\.email1\.click: 0\.7 is more than its open"):
        model.rates_for(FLOW, _step("email1"))


def test_draws_are_fixed_by_seed_and_parts() -> None:
    assert draw(1, "cart-1", "sms1", "click") == draw(1, "cart-1", "sms1", "click")
    assert draw(1, "cart-1", "sms1", "click") != draw(2, "cart-1", "sms1", "click")
    assert draw(1, "cart-1", "sms1", "click") != draw(1, "cart-1", "sms1", "order")
    # The parts are kept apart: ("ab", "c") is not ("a", "bc").
    assert draw(1, "ab", "c") != draw(1, "a", "bc")


def test_draws_are_uniform_enough_to_meet_a_rate() -> None:
    values = [draw(7, f"cart-{n}", "email1", "open") for n in range(20_000)]
    assert all(0 <= value < 1 for value in values)
    for rate in (0.05, 0.287, 0.63):
        share = sum(value < rate for value in values) / len(values)
        # Three standard deviations of a binomial share over 20,000 draws.
        assert abs(share - rate) < 3 * (rate * (1 - rate) / len(values)) ** 0.5
