"""The cost rule's test: Welch's one-sided t on the per-prediction cost, from cell counts.

Checked against scipy.stats on the expanded per-prediction costs of randomized matrices, its
confidence bound against the test it inverts, and its false-fail rate on simulated identical
canaries (at most alpha) and at the limit itself (about alpha)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from confusion_exporter.stats.cost import cost_increase_test, cost_moments
from confusion_exporter.stats.shift import ShiftParameters
from confusion_exporter.stats.simulation import gate_rates, scaled_errors, structured_classifier

COST = np.array([[0, 1, 5], [1, 0, 1], [1, 1, 0]], dtype=np.float64)  # one expensive error


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    k = int(rng.integers(2, 6))
    cost = rng.choice([0.0, 0.5, 1.0, 2.0, 5.0, 50.0], size=(k, k))
    np.fill_diagonal(cost, 0.0)
    cost[0, 1] = 1.0  # at least one costly cell, so the costs vary
    scale = int(rng.choice([5, 50, 500]))
    reference = rng.integers(0, scale, size=(k, k))
    current = rng.integers(0, scale, size=(k, k))
    reference[0, 1] += 1  # at least one costly error in each window
    current[0, 1] += 1
    return reference, current, cost, float(rng.choice([0.0, 0.15, 0.5])), float(rng.choice([0.001, 0.05]))


def per_prediction(matrix: np.ndarray, cost: np.ndarray) -> np.ndarray:
    return np.repeat(cost.ravel(), matrix.ravel())


@pytest.mark.parametrize("seed", range(40))
def test_the_test_equals_scipy_welch_on_the_per_prediction_costs(seed: int) -> None:
    reference, current, cost, limit, alpha = random_case(np.random.default_rng(seed))
    result = cost_increase_test(reference, current, cost, limit, alpha)
    x_ref, x_cur = per_prediction(reference, cost), per_prediction(current, cost)
    moments = cost_moments(current, cost)
    assert moments.mean == pytest.approx(x_cur.mean()) and moments.variance == pytest.approx(
        x_cur.var(ddof=1)
    )
    welch = stats.ttest_ind(x_cur, (1 + limit) * x_ref, equal_var=False, alternative="greater")
    assert result.statistic == pytest.approx(welch.statistic, rel=1e-9)
    assert result.p_value == pytest.approx(welch.pvalue, rel=1e-7, abs=1e-300)
    assert result.dof == pytest.approx(welch.df, rel=1e-9)
    assert result.increase == pytest.approx(x_cur.mean() / x_ref.mean() - 1)
    # The bound inverts the test: at 1 + bound, scipy's p is alpha exactly ...
    if math.isfinite(result.lower_bound) and result.lower_bound > -1:
        at_bound = stats.ttest_ind(
            x_cur, (1 + result.lower_bound) * x_ref, equal_var=False, alternative="greater"
        )
        assert at_bound.pvalue == pytest.approx(alpha, rel=1e-6)
    # ... so it is above the limit exactly when the test rejects "at most the limit".
    assert (result.lower_bound > limit) == (result.p_value < alpha)


def test_degenerate_windows() -> None:
    no_errors = np.diag([100, 100, 100])
    some_errors = no_errors + np.array([[0, 10, 10], [10, 0, 10], [10, 10, 0]])
    none = cost_increase_test(no_errors, no_errors, COST, 0.15, 0.01)
    assert none.p_value == 1.0 and none.lower_bound == -1.0 and math.isnan(none.increase)
    # A stable version without a single error: no ratio, but a canary surely above 0 fails.
    from_nothing = cost_increase_test(no_errors, some_errors, COST, 0.15, 0.01)
    assert from_nothing.p_value < 0.01 and from_nothing.lower_bound == math.inf
    better = cost_increase_test(some_errors, no_errors, COST, 0.15, 0.01)
    assert better.p_value > 0.99 and better.lower_bound == -1.0
    for tiny in (np.zeros((3, 3), np.int64), np.diag([1, 0, 0])):
        result = cost_increase_test(tiny, some_errors, COST, 0.15, 0.01)
        assert math.isnan(result.p_value) and math.isnan(result.lower_bound)


MODEL = structured_classifier(3, accuracy=0.98)  # 2% errors, as in the identical canary
PARAMS = ShiftParameters(alpha=0.05, min_effect=0.03)


@pytest.mark.parametrize(
    ("accuracy", "n"),
    [(0.98, 2400), (0.98, 200), (0.995, 2400), (0.8, 3000)],
)
def test_an_identical_canary_fails_the_gate_at_most_at_alpha(accuracy: float, n: int) -> None:
    model = structured_classifier(3, accuracy=accuracy)
    rates = gate_rates(model, model, COST, n, 0.15, PARAMS, pairs=1500, seed=int(accuracy * 1000) + n)
    slack = 3 * math.sqrt(PARAMS.alpha * (1 - PARAMS.alpha) / rates.pairs)
    assert rates.cost <= PARAMS.alpha / 2 + slack
    assert rates.gate <= PARAMS.alpha + slack
    if (accuracy, n) == (0.98, 2400):
        assert rates.raw_cost > 0.2  # what the point estimate alone did: fail about 3 in 10


def test_at_the_limit_the_cost_rule_fails_at_about_its_alpha() -> None:
    """The test's size: a canary whose true mean cost is exactly 1.15 x stable's."""
    rates = gate_rates(MODEL, scaled_errors(MODEL, 1.15), COST, 2400, 0.15, PARAMS, pairs=3000, seed=5)
    assert 0.5 * PARAMS.alpha / 2 <= rates.cost <= 1.5 * PARAMS.alpha / 2


def test_the_readme_bad_canary_fails() -> None:
    """+120% cost at 20% errors and 3,000 labeled predictions each, at the default alpha."""
    model = structured_classifier(3, accuracy=0.8)
    rates = gate_rates(
        model, scaled_errors(model, 2.2), COST, 3000, 0.15, ShiftParameters(alpha=0.001), 60, 9
    )
    assert rates.cost == 1.0
