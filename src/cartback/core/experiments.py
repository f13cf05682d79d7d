"""Readouts of A/B tests and holdouts: proportions with intervals, and when to say nothing.

Pure arithmetic over counts; the statistics themselves come from scipy (pinned in pyproject).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import integrate, stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
# Below these a holdout comparison is reported as "too small to tell": the normal approximation
# behind the interval needs a few hundred carts and a handful of orders in each group.
MIN_GROUP_CARTS = 100
MIN_GROUP_ORDERS = 5


@dataclass(frozen=True, slots=True)
class Proportion:
    successes: int
    trials: int
    rate: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Difference:
    """b − a, with its interval and the two-proportion test's p-value."""

    diff: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


def proportion(successes: int, trials: int) -> Proportion:
    """The rate with its Wilson score interval (scipy's binomtest)."""
    if trials == 0:
        return Proportion(successes, trials, 0.0, 0.0, 1.0)
    ci = stats.binomtest(successes, trials).proportion_ci(CONFIDENCE, method="wilson")
    return Proportion(successes, trials, successes / trials, float(ci.low), float(ci.high))


def difference(a: Proportion, b: Proportion) -> Difference:
    """Two-proportion z-test (the uncorrected chi-square test of the 2×2 table, which is the same
    test) and Newcombe's interval for b − a, built from the two Wilson intervals."""
    diff = b.rate - a.rate
    if a.trials == 0 or b.trials == 0:
        return Difference(diff, -1.0, 1.0, 1.0)
    table = [[a.successes, a.trials - a.successes], [b.successes, b.trials - b.successes]]
    if min(sum(row[0] for row in table), sum(row[1] for row in table)) == 0:
        p_value = 1.0  # nobody (or everybody) converted: no evidence of a difference
    else:
        p_value = float(stats.chi2_contingency(table, correction=False).pvalue)
    low = diff - math.sqrt((b.rate - b.low) ** 2 + (a.high - a.rate) ** 2)
    high = diff + math.sqrt((b.high - b.rate) ** 2 + (a.rate - a.low) ** 2)
    return Difference(diff, low, high, p_value)


def mean_interval(total: float, squares: float, n: int) -> tuple[float, float, float]:
    """The mean of n values from their sum and sum of squares, with a t interval."""
    if n == 0:
        return 0.0, 0.0, 0.0
    mean = total / n
    if n < 2:
        return mean, mean, mean
    variance = max(0.0, (squares - total * total / n) / (n - 1))
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * math.sqrt(variance / n)
    return mean, mean - half, mean + half


def mean_difference(
    a: tuple[float, float, int], b: tuple[float, float, int]
) -> tuple[float, float, float]:
    """b − a for two means given as (sum, sum of squares, n): Welch's normal interval."""
    (sa, qa, na), (sb, qb, nb) = a, b
    if na < 2 or nb < 2:
        return 0.0, 0.0, 0.0
    ma, mb = sa / na, sb / nb
    va = max(0.0, (qa - sa * sa / na) / (na - 1)) / na
    vb = max(0.0, (qb - sb * sb / nb) / (nb - 1)) / nb
    half = float(stats.norm.ppf(1 - ALPHA / 2)) * math.sqrt(va + vb)
    return mb - ma, mb - ma - half, mb - ma + half


# The exact sum below has as many terms as the smaller group has orders; past this many the
# numerical integral is cheaper.
EXACT_TERMS = 20_000


def probability_b_beats_a(a: Proportion, b: Proportion) -> float:
    """Posterior P(rate_b > rate_a) with uniform Beta(1, 1) priors: the beta-binomial readout
    for small shops, meaningful whenever it is looked at."""
    alpha_a, beta_a = 1 + a.successes, 1 + a.trials - a.successes
    alpha_b, beta_b = 1 + b.successes, 1 + b.trials - b.successes
    if min(alpha_a, alpha_b) <= EXACT_TERMS:
        if alpha_b <= alpha_a:
            value = _beta_beats(alpha_a, beta_a, alpha_b, beta_b)
        else:  # the same sum from the other side: P(B > A) = 1 − P(A > B)
            value = 1.0 - _beta_beats(alpha_b, beta_b, alpha_a, beta_a)
    else:
        value = _beta_beats_integral(alpha_a, beta_a, alpha_b, beta_b)
    return min(1.0, max(0.0, value))


def _log_beta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def _beta_beats(alpha_a: int, beta_a: int, alpha_b: int, beta_b: int) -> float:
    """P(X_b > X_a) for X ~ Beta with integer parameters, exactly: the closed-form sum over
    i < alpha_b of B(alpha_a + i, beta_a + beta_b) / ((beta_b + i) B(1 + i, beta_b) B(alpha_a,
    beta_a)). A scipy integral costs a distribution call per point, the bulk of a report."""
    base = _log_beta(alpha_a, beta_a)
    return math.fsum(
        math.exp(
            _log_beta(alpha_a + i, beta_a + beta_b)
            - math.log(beta_b + i)
            - _log_beta(1 + i, beta_b)
            - base
        )
        for i in range(alpha_b)
    )


def _beta_beats_integral(alpha_a: int, beta_a: int, alpha_b: int, beta_b: int) -> float:
    post_a, post_b = stats.beta(alpha_a, beta_a), stats.beta(alpha_b, beta_b)
    # P(B > A) = ∫ f_B(x) · F_A(x) dx over [0, 1].
    value, _error = integrate.quad(lambda x: post_b.pdf(x) * post_a.cdf(x), 0.0, 1.0, limit=200)
    return float(value)


def too_small(*groups: Proportion) -> bool:
    return any(
        g.trials < MIN_GROUP_CARTS
        or g.successes < MIN_GROUP_ORDERS
        or g.trials - g.successes < MIN_GROUP_ORDERS
        for g in groups
    )
