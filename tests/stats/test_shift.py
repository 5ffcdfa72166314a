"""Shift tests against scipy.stats.chi2_contingency, and their decisions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from confusion_exporter.stats.shift import (
    ERROR_PATTERN,
    INSUFFICIENT_DATA,
    JOINT,
    LABEL_PRIOR,
    PREDICTION_PRIOR,
    SHIFT,
    STABLE,
    ShiftParameters,
    adjusted_residuals,
    balanced_cramers_v,
    contingency,
    homogeneity_test,
    shift_report,
)

PARAMS = ShiftParameters(alpha=0.01, min_effect=0.05, min_samples=100)


def dense_pairs(max_cols: int = 12):  # type: ignore[no-untyped-def]
    """Two count vectors where the plain test applies (expected >= 5, each window >= 1,000)."""
    return st.integers(2, max_cols).flatmap(
        lambda c: st.tuples(
            st.lists(st.integers(500, 5000), min_size=c, max_size=c),
            st.lists(st.integers(500, 5000), min_size=c, max_size=c),
        )
    )


@settings(max_examples=300, deadline=None)
@given(pair=dense_pairs())
def test_homogeneity_equals_scipy_where_the_plain_test_applies(pair):
    reference, current = (np.array(v, dtype=np.int64) for v in pair)
    table = np.vstack([reference, current])
    chi2, p, dof, expected = stats.chi2_contingency(table, correction=False)
    assume((expected >= 5).all())
    result = homogeneity_test(JOINT, reference, current, PARAMS)
    assert not result.monte_carlo
    assert result.dof == dof
    assert result.statistic == pytest.approx(chi2, rel=1e-9, abs=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-9, abs=1e-300)
    assert result.log10_p_value == pytest.approx(math.log10(p), rel=1e-9, abs=1e-12) if p > 0 else True


@settings(max_examples=150, deadline=None)
@given(k=st.integers(2, 8), data=st.data())
def test_error_pattern_sums_scipy_over_true_classes(k, data):
    cells = st.lists(st.integers(500, 3000), min_size=k * k, max_size=k * k)
    reference = np.array(data.draw(cells), dtype=np.int64).reshape(k, k)
    current = np.array(data.draw(cells), dtype=np.int64).reshape(k, k)
    report = shift_report(
        reference,
        current,
        np.zeros(k, np.int64),
        np.zeros(k, np.int64),
        tuple(str(i) for i in range(k)),
        PARAMS,
    )
    total, dof = 0.0, 0
    for i in range(k):
        chi2, p_row, d, expected = stats.chi2_contingency(
            np.vstack([reference[i], current[i]]), correction=False
        )
        assume((expected >= 5).all())
        total += chi2
        dof += d
        assert report.rows[i].statistic == pytest.approx(chi2, rel=1e-9)
        assert report.rows[i].p_value == pytest.approx(p_row, rel=1e-9, abs=1e-300)
    result = report.tests[ERROR_PATTERN]
    assert not result.monte_carlo
    assert result.dof == dof
    assert result.statistic == pytest.approx(total, rel=1e-9)
    assert result.p_value == pytest.approx(stats.chi2.sf(total, dof), rel=1e-9, abs=1e-300)
    # The other three tests are plain 2 x C tests of flattened or marginal counts.
    for name, ref, cur in (
        (JOINT, reference.ravel(), current.ravel()),
        (LABEL_PRIOR, reference.sum(1), current.sum(1)),
        (PREDICTION_PRIOR, reference.sum(0), current.sum(0)),
    ):
        chi2, p, d, _ = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
        assert report.tests[name].statistic == pytest.approx(chi2, rel=1e-9)
        assert report.tests[name].dof == d


def test_far_tail_p_values_do_not_underflow():
    reference = np.array([100_000, 100], dtype=np.int64)
    current = np.array([100, 100_000], dtype=np.int64)
    result = homogeneity_test(JOINT, reference, current, PARAMS)
    assert result.log10_p_value < -1000  # far below the smallest double
    assert math.isfinite(result.log10_p_value)
    assert result.state == SHIFT


def test_empty_cells_in_both_windows_are_dropped():
    with_zeros = homogeneity_test(JOINT, np.array([50, 0, 60, 70]), np.array([55, 0, 40, 80]), PARAMS)
    without = homogeneity_test(JOINT, np.array([50, 60, 70]), np.array([55, 40, 80]), PARAMS)
    assert with_zeros.statistic == pytest.approx(without.statistic)
    assert with_zeros.dof == without.dof == 2


def test_bias_corrected_effect_size_does_not_grow_with_n():
    # No change at large N: ~0, while the uncorrected distance is not.
    rng = np.random.default_rng(1)
    probabilities = np.array([0.5, 0.3, 0.2])
    null = balanced_cramers_v(rng.multinomial(50_000, probabilities), rng.multinomial(50_000, probabilities))
    assert null < 0.01
    # A fixed real difference: the effect is the same at N = 2,000 and 200,000 (chi-square is not).
    small = contingency(np.array([600, 400]), np.array([400, 600]))
    large = contingency(np.array([60_000, 40_000]), np.array([40_000, 60_000]))
    assert large.statistic > 90 * small.statistic
    v_small = balanced_cramers_v(np.array([600, 400]), np.array([400, 600]))
    v_large = balanced_cramers_v(np.array([60_000, 40_000]), np.array([40_000, 60_000]))
    assert v_small == pytest.approx(0.2, abs=0.005) and v_large == pytest.approx(0.2, abs=0.001)
    # Uncorrected and at equal sizes, it is scipy's Cramer's V.
    scipy_v = stats.contingency.association(np.vstack([[600, 400], [400, 600]]), method="cramer")
    assert math.sqrt(small.statistic / small.n) == pytest.approx(scipy_v)


@settings(max_examples=200, deadline=None)
@given(pair=dense_pairs(max_cols=6), ratio=st.integers(1, 50))
def test_balanced_v_is_cramers_v_at_equal_sizes_whatever_the_size_ratio(pair, ratio):
    reference, current = (np.array(v, dtype=np.int64) for v in pair)
    cols = int(((reference + current) > 0).sum())
    # Scaled to equal totals, the table's Cramer's V (scipy) less the bias term is the effect size.
    equal_ref, equal_cur = reference * current.sum(), current * reference.sum()
    v = stats.contingency.association(np.vstack([equal_ref, equal_cur]), method="cramer")
    bias = (cols - 1) * (1 / equal_ref.sum() + 1 / equal_cur.sum()) / 4
    assert balanced_cramers_v(equal_ref, equal_cur) ** 2 == pytest.approx(max(0.0, v**2 - bias), abs=1e-12)
    # A reference `ratio` times longer with the same distribution changes only the bias term,
    # where plain Cramer's V would shrink by sqrt(w(1-w)) with the window shares w.
    d = (
        balanced_cramers_v(reference, current) ** 2
        + (cols - 1) * (1 / reference.sum() + 1 / current.sum()) / 4
    )
    longer = balanced_cramers_v(reference * ratio, current) ** 2
    expected = d - (cols - 1) * (1 / (ratio * reference.sum()) + 1 / current.sum()) / 4
    if balanced_cramers_v(reference, current) > 0:
        assert longer == pytest.approx(max(0.0, expected), abs=1e-12)


def test_decisions():
    base = np.array([[900, 50], [40, 800]], dtype=np.int64)
    zeros = np.zeros(2, np.int64)
    classes = ("a", "b")
    same = shift_report(base * 10, base, zeros, zeros, classes, PARAMS)
    assert same.tests[ERROR_PATTERN].state == STABLE
    assert same.tests[ERROR_PATTERN].p_value == pytest.approx(1.0)
    few = shift_report(base, np.array([[5, 5], [0, 10]]), zeros, zeros, classes, PARAMS)
    assert {t.state for t in few.tests.values()} == {INSUFFICIENT_DATA}  # 20 < min_samples
    moved = shift_report(base * 10, np.array([[700, 250], [40, 800]]), zeros, zeros, classes, PARAMS)
    assert moved.tests[ERROR_PATTERN].state == SHIFT
    # Significant but tiny: stable, because the effect is below min_effect.
    huge = base * 10_000
    nudged = huge.copy()
    nudged[0] += [-20_000, 20_000]
    tiny = shift_report(huge, nudged, zeros, zeros, classes, PARAMS)
    assert tiny.tests[ERROR_PATTERN].p_value < 1e-10
    assert tiny.tests[ERROR_PATTERN].effect_size < 0.05
    assert tiny.tests[ERROR_PATTERN].state == STABLE


def test_a_pure_label_prior_shift_moves_label_prior_not_error_pattern():
    confusion = np.array([[0.95, 0.04, 0.01], [0.05, 0.90, 0.05], [0.02, 0.08, 0.90]])
    rng = np.random.default_rng(4)

    def draw(priors: list[float], n: int) -> np.ndarray:
        support = rng.multinomial(n, priors)
        return np.vstack([rng.multinomial(s, confusion[i]) for i, s in enumerate(support)])

    reference = draw([0.6, 0.3, 0.1], 200_000)
    current = draw([0.2, 0.3, 0.5], 20_000)  # the world changed, the model did not
    zeros = np.zeros(3, np.int64)
    report = shift_report(reference, current, zeros, zeros, ("a", "b", "c"), PARAMS)
    assert report.tests[LABEL_PRIOR].state == SHIFT
    assert report.tests[ERROR_PATTERN].state == STABLE
    assert report.tests[PREDICTION_PRIOR].state == SHIFT  # predictions follow the labels


def test_monte_carlo_for_sparse_tables_is_deterministic_and_bounded():
    reference = np.array([[480, 3, 1], [2, 300, 0], [1, 0, 150]], dtype=np.int64)
    current = np.array([[40, 4, 0], [0, 25, 1], [0, 1, 12]], dtype=np.int64)
    zeros = np.zeros(3, np.int64)
    first = shift_report(reference, current, zeros, zeros, ("a", "b", "c"), PARAMS)
    second = shift_report(reference, current, zeros, zeros, ("a", "b", "c"), PARAMS)
    result = first.tests[ERROR_PATTERN]
    assert result.monte_carlo
    assert result.p_value == second.tests[ERROR_PATTERN].p_value  # fixed seed
    assert 1 / (PARAMS.monte_carlo_samples + 1) <= result.p_value <= 1


def test_adjusted_residuals_of_a_2x2_are_the_signed_root_of_chi_square():
    reference = np.array([[300, 100]], dtype=np.int64)
    current = np.array([[200, 150]], dtype=np.int64)
    residuals = adjusted_residuals(reference, current)
    chi2 = stats.chi2_contingency(np.vstack([reference[0], current[0]]), correction=False)[0]
    assert residuals[0, 1] == pytest.approx(math.sqrt(chi2))
    assert residuals[0, 0] == pytest.approx(-math.sqrt(chi2))


def test_top_cells_name_the_confusion_that_grew():
    k = 10
    reference = np.full((k, k), 10, dtype=np.int64) + np.diag(np.full(k, 2000))
    current = reference.copy()
    current[8, 1] += 150  # true 8 predicted as 1, much more often
    zeros = np.zeros(k, np.int64)
    report = shift_report(reference * 5, current, zeros, zeros, tuple(str(i) for i in range(k)), PARAMS)
    top = report.cells[0]
    assert (top.true_class, top.predicted_class) == ("8", "1")
    assert top.residual > 0 and top.current_share > top.reference_share
    assert max(report.rows, key=lambda r: r.effect_size).true_class == "8"
    assert report.tests[ERROR_PATTERN].state == SHIFT


@pytest.mark.parametrize("dof", [1, 2, 9, 49])
def test_log_survival_is_continuous_where_scipy_gives_up(dof):
    from confusion_exporter.stats.shift import chi2_log_sf, log_upper_gamma_asymptotic

    # Where scipy's logsf is still finite, the asymptotic series agrees with it.
    for statistic in (400.0 + 10 * dof, 700.0 + 10 * dof):
        expected = stats.chi2.logsf(statistic, dof)
        assert math.isfinite(expected)
        assert log_upper_gamma_asymptotic(dof / 2, statistic / 2) == pytest.approx(expected, rel=1e-9)
    # Beyond scipy's range, the value keeps decreasing smoothly instead of jumping to -inf.
    values = [chi2_log_sf(x, dof) for x in (1e4, 1e5, 1e6)]
    assert all(math.isfinite(v) for v in values) and values[0] > values[1] > values[2]


def test_simulated_statistics_follow_patefields_conditional_null():
    """The Monte Carlo null (numpy's multivariate hypergeometric row) has the same law as
    scipy's Patefield sampler of tables with the observed margins."""
    from confusion_exporter.stats.shift import _simulated_statistics

    for reference, current in (
        (np.array([30, 5, 0, 12, 3]), np.array([10, 9, 4, 2, 1])),
        (np.array([900, 40, 7, 2]), np.array([95, 3, 1, 1])),
    ):
        table = contingency(reference, current)
        ours = _simulated_statistics(table, 4000, np.random.default_rng(3))
        rows = table.observed.sum(axis=1).astype(np.int64)
        cols = table.observed.sum(axis=0).astype(np.int64)
        draws = stats.random_table(rows, cols, seed=11).rvs(4000, method="patefield")
        patefield = ((draws - table.expected) ** 2 / table.expected).sum(axis=(1, 2))
        assert stats.ks_2samp(ours, patefield).pvalue > 0.001


def test_the_exporter_does_not_import_scipy_stats():
    """scipy.stats is 75 MB of resident memory; the run path needs only scipy.special."""
    import subprocess
    import sys

    code = (
        "import sys, confusion_exporter.cli, confusion_exporter.refresher, confusion_exporter.web; "
        "print('scipy.stats' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
