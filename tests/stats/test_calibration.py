"""The error-pattern decision keeps false alarms at or below alpha, and finds real shifts.

The same study as benchmarks/shift_simulation.py (whose tables are in docs/statistics.md),
with fixed seeds: >= 1,000 simulated window pairs per configuration.
"""

from __future__ import annotations

import pytest

from confusion_exporter.stats.shift import ShiftParameters
from confusion_exporter.stats.simulation import (
    error_pattern_rates,
    fraud_error_swap,
    recall_drop,
    structured_classifier,
)

PARAMS = ShiftParameters()  # the documented defaults: alpha 0.01, min_effect 0.05, min_samples 200


def ceiling(pairs: int) -> float:
    """alpha plus two binomial standard errors: an exact test's empirical rate stays below this
    with ~98% probability, so a rate above it is evidence of a test that alarms too often."""
    return PARAMS.alpha + 2 * (PARAMS.alpha * (1 - PARAMS.alpha) / pairs) ** 0.5


@pytest.mark.parametrize("k", [2, 10, 50])
@pytest.mark.parametrize(
    ("n_current", "n_reference"),
    [(200, 4_800), (100_000, 1_000_000)],  # 1 h at 200/h vs 24 h; 1 h at 100k/h vs 10 h
    ids=["small", "large"],
)
def test_no_shift_alarms_at_most_alpha(k, n_current, n_reference):
    pairs = 1000 if k == 50 else 2000
    model = structured_classifier(k)
    rates = error_pattern_rates(model, model, n_reference, n_current, pairs, PARAMS, seed=k * 7 + n_current)
    assert rates.decided_shift <= ceiling(pairs), rates  # the exported decision
    assert rates.significant <= ceiling(pairs), rates  # the p-value alone


def test_the_naive_asymptotic_test_would_not_be():
    """Why the Monte Carlo: the plain summed chi-square on sparse tables alarms far above alpha."""
    model = structured_classifier(10)
    rates = error_pattern_rates(model, model, 4_800, 200, 2000, PARAMS, seed=99)
    assert rates.monte_carlo_share == 1.0
    assert rates.naive_significant > 5 * PARAMS.alpha
    assert rates.significant <= ceiling(2000)


def test_error_swap_at_constant_accuracy_is_detected():
    before, after = fraud_error_swap()
    assert abs(before.accuracy - after.accuracy) < 1e-9
    rates = error_pattern_rates(before, after, 100_000, 10_000, 200, PARAMS, seed=5)
    assert rates.decided_shift >= 0.95, rates


def test_five_point_recall_drop_on_a_one_percent_class_is_detected():
    base = structured_classifier(10, rare_prevalence=0.01)
    dropped = recall_drop(base, cls=9, points=0.05)
    rates = error_pattern_rates(base, dropped, 3_000_000, 300_000, 100, PARAMS, seed=6)
    assert rates.decided_shift >= 0.95, rates
