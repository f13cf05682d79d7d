"""The A/B readout's P(B beats A): the exact sum equals the numerical integral it replaced."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cartback.core import experiments as ex


def _group(successes: int, failures: int) -> ex.Proportion:
    return ex.proportion(successes, successes + failures)


def _integral(a: ex.Proportion, b: ex.Proportion) -> float:
    return ex._beta_beats_integral(
        1 + a.successes, 1 + a.trials - a.successes, 1 + b.successes, 1 + b.trials - b.successes
    )


counts = st.integers(min_value=0, max_value=400)


@settings(max_examples=150, deadline=None)
@given(counts, counts, counts, counts)
def test_the_exact_sum_equals_the_integral(sa: int, fa: int, sb: int, fb: int) -> None:
    a, b = _group(sa, fa), _group(sb, fb)
    assert ex.probability_b_beats_a(a, b) == pytest.approx(_integral(a, b), abs=1e-6)


def test_the_two_orders_add_up_to_one() -> None:
    a, b = _group(30, 970), _group(45, 955)
    assert ex.probability_b_beats_a(a, b) + ex.probability_b_beats_a(b, a) == pytest.approx(1.0)


def test_known_values() -> None:
    # Equal groups: a coin toss; one order against none in one cart each: Beta(2,1) vs Beta(1,2).
    assert ex.probability_b_beats_a(_group(10, 90), _group(10, 90)) == pytest.approx(0.5)
    assert ex.probability_b_beats_a(_group(0, 1), _group(1, 0)) == pytest.approx(5 / 6)
    assert ex.probability_b_beats_a(_group(20, 980), _group(60, 940)) > 0.9999


def test_large_groups_fall_back_to_the_integral() -> None:
    many = ex.EXACT_TERMS + 10
    a, b = _group(many, many * 9), _group(many + 300, many * 9 - 300)
    assert ex.probability_b_beats_a(a, b) == pytest.approx(_integral(a, b), abs=1e-6)
