"""Chi-square tests of confusion-matrix shift between a reference and a current window.

Four tests of homogeneity, each a 2 x C table (reference row, current row):

- ``joint``: the flattened K x K matrices (a column per cell, cells empty in both dropped);
- ``error_pattern``: per true class, the predicted-class distribution of reference vs
  current; statistics and degrees of freedom summed over the true classes. Conditioning on
  the true class makes it blind to a pure change of class priors: this is the test that pages;
- ``label_prior``: the true-class distributions (label shift);
- ``prediction_prior``: the predicted-class distributions, unlabeled predictions included,
  so it can warn before labels arrive.

p-values: where every expected count is >= 5 the chi-square distribution applies and the
p-value is its survival function, computed in log space so a far-tail p never underflows
to 0. Where any expected count is < 5 (normal for a good classifier's off-diagonal cells)
the approximation is wrong, so the p-value is a Monte Carlo conditional test instead:
tables with the observed margins are drawn (for a 2 x C table, the reference row is a
multivariate hypergeometric draw from the column totals: exactly the conditional null) with
a seed derived from the table, sequentially (Besag-Clifford: stop after 10 simulated
statistics reach the observed one) up to a bounded count, which gives a valid p-value at any
sample size and costs one batch of 99 tables in the usual no-shift case.

Effect size: bias-corrected Cramér's V at balanced allocation (:func:`balanced_cramers_v`),
which grows neither with N nor with the size ratio of the two windows. For
``error_pattern`` it is the largest per-true-class V among rows with enough samples: a shift
confined to one class (the usual failure, e.g. a minority class's misses turning into false
alarms) must not be diluted by the classes that did not move. See docs/statistics.md.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special

JOINT = "joint"
ERROR_PATTERN = "error_pattern"
LABEL_PRIOR = "label_prior"
PREDICTION_PRIOR = "prediction_prior"
TESTS = (JOINT, ERROR_PATTERN, LABEL_PRIOR, PREDICTION_PRIOR)

SHIFT = "shift"
STABLE = "stable"
INSUFFICIENT_DATA = "insufficient_data"
STATES = (SHIFT, STABLE, INSUFFICIENT_DATA)

MIN_EXPECTED = 5.0  # Cochran's rule for the chi-square approximation
MIN_ROW_TOTAL = 1000  # below this many predictions in either window, simulate instead
DEFAULT_MONTE_CARLO_SAMPLES = 999
DEFAULT_SEED = 20261123
LOG10_E = math.log10(math.e)

Counts = NDArray[np.int64]


@dataclass(frozen=True)
class ShiftParameters:
    """Thresholds of one monitor's decisions."""

    alpha: float = 0.01
    min_effect: float = 0.05
    min_samples: int = 200
    min_row_samples: int = 20
    monte_carlo_samples: int = DEFAULT_MONTE_CARLO_SAMPLES
    seed: int = DEFAULT_SEED
    top_cells: int = 10


@dataclass(frozen=True)
class TestResult:
    """One chi-square test of homogeneity and its decision."""

    test: str
    statistic: float
    dof: int
    p_value: float
    log10_p_value: float
    effect_size: float
    n_reference: int
    n_current: int
    monte_carlo: bool
    state: str


@dataclass(frozen=True)
class RowResult:
    """The error-pattern test restricted to one true class."""

    true_class: str
    statistic: float
    dof: int
    p_value: float
    effect_size: float
    n_reference: int
    n_current: int


@dataclass(frozen=True)
class CellResidual:
    """Adjusted standardized residual of a current-window cell within its true-class row.

    Positive: true_class is predicted as predicted_class more often than in the reference.
    """

    true_class: str
    predicted_class: str
    residual: float
    reference_share: float
    current_share: float


@dataclass(frozen=True)
class ShiftReport:
    """All tests of one slice."""

    tests: dict[str, TestResult]
    rows: tuple[RowResult, ...]
    cells: tuple[CellResidual, ...]


@dataclass(frozen=True)
class _Table:
    observed: NDArray[np.float64]  # 2 x C, empty columns dropped
    expected: NDArray[np.float64]
    statistic: float
    dof: int
    n: int


def contingency(reference: Counts, current: Counts) -> _Table:
    """Build the 2 x C table of two count vectors and its Pearson statistic (scipy's, unrounded)."""
    observed = np.vstack([np.asarray(reference, np.float64), np.asarray(current, np.float64)])
    observed = observed[:, observed.sum(axis=0) > 0]
    n = int(observed.sum())
    rows, cols = observed.sum(axis=1), observed.sum(axis=0)
    if n == 0 or (rows == 0).any() or observed.shape[1] < 2:
        return _Table(observed, observed.copy(), 0.0, 0, n)
    expected = np.outer(rows, cols) / n
    statistic = float(((observed - expected) ** 2 / expected).sum())
    return _Table(observed, expected, statistic, observed.shape[1] - 1, n)


def balanced_cramers_v(reference: Counts, current: Counts) -> float:
    """Bias-corrected Cramér's V of two distributions, as if both windows had equal size.

    For a 2 x C table with window shares w and 1-w, phi^2 = w(1-w) * sum (p-q)^2 / m, so plain
    Cramér's V of a 1 h window against a 24 h reference is ~0.39x that of 1 h against 1 h for
    the same change. Weighting both windows equally removes that dependence:
    V^2 = 1/4 * sum_j (p_j - q_j)^2 / ((p_j + q_j) / 2), which equals Cramér's V at equal sizes
    and lies in [0, 1]. Its sampling bias under no change, (C-1)(1/n_ref + 1/n_cur) inside
    the sum, is subtracted (as in Bergsma 2013), so it is ~0 under no change at any N.
    """
    ref = np.asarray(reference, np.float64)
    cur = np.asarray(current, np.float64)
    n_ref, n_cur = ref.sum(), cur.sum()
    if n_ref == 0 or n_cur == 0:
        return float("nan")
    keep = (ref + cur) > 0
    p, q = ref[keep] / n_ref, cur[keep] / n_cur
    if p.size < 2:
        return 0.0
    distance = float(((p - q) ** 2 / ((p + q) / 2)).sum())
    corrected = distance - (p.size - 1) * (1 / n_ref + 1 / n_cur)
    return math.sqrt(max(0.0, corrected) / 4)


def chi2_log_sf(statistic: float, dof: int) -> float:
    """Natural log of the chi-square survival function, finite however far in the tail.

    scipy's ``logsf`` returns -inf once the survival function underflows (statistic ~1500 at
    dof 1); there the asymptotic expansion of the regularized upper incomplete gamma function
    Q(a, z) ~ z^(a-1) e^-z / Gamma(a) * sum_n (a-1)(a-2)...(a-n) / z^n takes over.
    """
    sf = float(special.chdtrc(dof, statistic))
    if sf > 0.0:
        return math.log(sf)
    return log_upper_gamma_asymptotic(dof / 2.0, statistic / 2.0)


def log_upper_gamma_asymptotic(a: float, z: float) -> float:
    """log Q(a, z) for z >> a by the asymptotic series (terms taken while they shrink)."""
    total, term = 1.0, 1.0
    for n in range(1, 60):
        next_term = term * (a - n) / z
        if abs(next_term) >= abs(term) or next_term == 0.0:
            break
        term = next_term
        total += term
    return (a - 1) * math.log(z) - z - math.lgamma(a) + math.log(total)


def _asymptotic_p(statistic: float, dof: int) -> tuple[float, float]:
    """p and log10 p: p may underflow to 0.0, its logarithm does not."""
    log_p = chi2_log_sf(statistic, dof)
    return math.exp(log_p), log_p * LOG10_E


def _table_rng(seed: int, counts: NDArray[np.generic]) -> np.random.Generator:
    """A generator seeded by the configured seed and the table itself.

    The same table always gets the same p-value (reproducible snapshots and tests), while
    different tables get independent draws: a Monte Carlo p-value is valid on average over
    its draws, which one draw reused for every table would not give.
    """
    digest = zlib.crc32(np.ascontiguousarray(counts, dtype=np.int64).tobytes())
    return np.random.default_rng([seed, digest])


def _simulated_statistics(table: _Table, samples: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Pearson statistics of tables drawn with the observed margins (the conditional null)."""
    rows = table.observed.sum(axis=1).astype(np.int64)
    cols = table.observed.sum(axis=0).astype(np.int64)
    # Every table here has two rows, so the first row determines the second. numpy's
    # "marginals" method costs O(columns) per draw, whatever the counts; scipy.stats (and
    # its 75 MB import) is not needed at run time.
    # numpy holds the GIL for the whole call: in chunks of ~20k column draws (~2 ms), a
    # scrape served by another thread never waits long for a refresh's simulation.
    chunk = max(1, GIL_CHUNK_DRAWS // max(1, cols.size))
    out = np.empty(samples)
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        first = rng.multivariate_hypergeometric(cols, int(rows[0]), size=size, method="marginals")
        draws = np.stack([first, cols - first], axis=1).astype(np.float64)
        out[start : start + size] = ((draws - table.expected) ** 2 / table.expected).sum(axis=(1, 2))
    return out


GIL_CHUNK_DRAWS = 20_000


SEQUENTIAL_HITS = 10  # Besag-Clifford: stop once this many simulated statistics reach the observed one
SEQUENTIAL_BATCH = 99


def sequential_monte_carlo_p(
    observed: float, simulate: Callable[[int], NDArray[np.float64]], max_samples: int
) -> tuple[float, int]:
    """Sequential Monte Carlo p-value (Besag & Clifford 1991); returns (p, tables drawn).

    Draws in batches and stops as soon as ``SEQUENTIAL_HITS`` simulated statistics are at
    least as extreme as the observed one (p = hits / drawn, clearly above any alpha of
    interest); otherwise draws up to ``max_samples`` and returns (1 + hits) / (1 + drawn).
    Both are valid p-values; under no shift most evaluations stop after one batch.
    """
    hits, drawn = 0, 0
    threshold = observed * (1 - 1e-12)  # ties in floating point count as "as extreme"
    while drawn < max_samples:
        size = min(SEQUENTIAL_BATCH, max_samples - drawn)
        hits += int((simulate(size) >= threshold).sum())
        drawn += size
        if hits >= SEQUENTIAL_HITS:
            return hits / drawn, drawn
    return (1 + hits) / (1 + drawn), drawn


def _sparse(table: _Table) -> bool:
    """Where Pearson's statistic is not chi-square enough: an expected count below 5, or a
    small window (measured: at 200 labels against 4,800 the asymptotic test alarmed in 1.1-1.4%
    of no-change pairs at alpha = 1%, with every expected count above 5)."""
    if table.dof == 0:
        return False
    return bool((table.expected < MIN_EXPECTED).any() or table.observed.sum(axis=1).min() < MIN_ROW_TOTAL)


def _needs_monte_carlo(tables: list[_Table]) -> bool:
    return any(_sparse(t) for t in tables)


def _monte_carlo_p(observed: float, simulated: NDArray[np.float64]) -> float:
    # A relative tolerance so that ties in floating point count as "at least as extreme".
    exceed = int((simulated >= observed * (1 - 1e-12)).sum())
    return (1 + exceed) / (simulated.size + 1)


def _samples_for(params: ShiftParameters) -> int:
    # Enough tables that p can fall well below alpha; bounded so cost stays ~milliseconds.
    return int(min(19_999, max(params.monte_carlo_samples, math.ceil(10 / params.alpha) - 1)))


def homogeneity_test(name: str, reference: Counts, current: Counts, params: ShiftParameters) -> TestResult:
    """One 2 x C chi-square test of homogeneity with its effect size and decision."""
    table = contingency(reference, current)
    n_ref, n_cur = int(np.sum(reference)), int(np.sum(current))
    monte_carlo = _needs_monte_carlo([table])
    if table.dof == 0:
        p_value, log10_p = 1.0, 0.0
    elif monte_carlo:
        rng = _table_rng(params.seed, table.observed)
        p_value, _ = sequential_monte_carlo_p(
            table.statistic, lambda size: _simulated_statistics(table, size, rng), _samples_for(params)
        )
        log10_p = math.log10(p_value)
    else:
        p_value, log10_p = _asymptotic_p(table.statistic, table.dof)
    effect = balanced_cramers_v(reference, current)
    return _result(
        name, table.statistic, table.dof, p_value, log10_p, effect, n_ref, n_cur, monte_carlo, params
    )


def _result(
    name: str,
    statistic: float,
    dof: int,
    p_value: float,
    log10_p: float,
    effect: float,
    n_reference: int,
    n_current: int,
    monte_carlo: bool,
    params: ShiftParameters,
) -> TestResult:
    """Assemble a test's outcome with its decision."""
    if dof == 0 or min(n_reference, n_current) < params.min_samples:
        state = INSUFFICIENT_DATA
    elif p_value < params.alpha and effect >= params.min_effect:
        state = SHIFT
    else:
        state = STABLE
    return TestResult(
        name, statistic, dof, p_value, log10_p, effect, n_reference, n_current, monte_carlo, state
    )


def error_pattern_test(
    reference: Counts, current: Counts, classes: tuple[str, ...], params: ShiftParameters
) -> tuple[TestResult, tuple[RowResult, ...], tuple[CellResidual, ...]]:
    """Per-true-class tests of the predicted distribution, summed; with per-row results and residuals."""
    tables = [contingency(reference[i], current[i]) for i in range(len(classes))]
    statistic = float(sum(t.statistic for t in tables))
    dof = int(sum(t.dof for t in tables))
    monte_carlo = _needs_monte_carlo(tables)
    row_p = [1.0 if t.dof == 0 else float(special.chdtrc(t.dof, t.statistic)) for t in tables]
    if dof == 0:
        p_value, log10_p = 1.0, 0.0
    elif monte_carlo:
        rng = _table_rng(params.seed, np.vstack([reference, current]))
        sparse = [i for i, t in enumerate(tables) if _sparse(t)]
        dense_dof = sum(t.dof for i, t in enumerate(tables) if i not in sparse)
        per_row: dict[int, list[NDArray[np.float64]]] = {i: [] for i in sparse}

        def simulate(size: int) -> NDArray[np.float64]:
            # Where the approximation holds, the dense rows' summed null statistic is
            # chi-square(their dof): drawing it directly costs nothing at any count.
            total = rng.chisquare(dense_dof, size=size) if dense_dof else np.zeros(size)
            for i in sparse:
                draws = _simulated_statistics(tables[i], size, rng)
                per_row[i].append(draws)
                total += draws
            return total  # type: ignore[no-any-return]

        p_value, _ = sequential_monte_carlo_p(statistic, simulate, _samples_for(params))
        log10_p = math.log10(p_value)
        for i in sparse:
            row_p[i] = _monte_carlo_p(tables[i].statistic, np.concatenate(per_row[i]))
    else:
        p_value, log10_p = _asymptotic_p(statistic, dof)

    rows = []
    for i, (name, table) in enumerate(zip(classes, tables, strict=True)):
        n_ref, n_cur = int(reference[i].sum()), int(current[i].sum())
        effect = balanced_cramers_v(reference[i], current[i]) if table.dof else 0.0
        rows.append(RowResult(name, table.statistic, table.dof, row_p[i], effect, n_ref, n_cur))
    eligible = [
        r.effect_size for r in rows if r.dof > 0 and min(r.n_reference, r.n_current) >= params.min_row_samples
    ]
    effect = max(eligible) if eligible else 0.0
    n_ref, n_cur = int(reference.sum()), int(current.sum())
    result = _result(
        ERROR_PATTERN, statistic, dof, p_value, log10_p, effect, n_ref, n_cur, monte_carlo, params
    )
    return result, tuple(rows), top_residuals(reference, current, classes, params.top_cells)


def adjusted_residuals(reference: Counts, current: Counts) -> NDArray[np.float64]:
    """Adjusted standardized residuals of the current row of each true class's 2 x K table.

    r = (O - E) / sqrt(E (1 - row share) (1 - column share)); ~N(0, 1) under no shift.
    NaN where the cell is empty in both windows or the row is empty in either.
    """
    ref = np.asarray(reference, np.float64)
    cur = np.asarray(current, np.float64)
    out = np.full(cur.shape, np.nan)
    for i in range(cur.shape[0]):
        n_ref, n_cur = ref[i].sum(), cur[i].sum()
        n = n_ref + n_cur
        if n_ref == 0 or n_cur == 0:
            continue
        col = ref[i] + cur[i]
        valid = col > 0
        expected = n_cur * col / n
        variance = expected * (1 - n_cur / n) * (1 - col / n)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (cur[i] - expected) / np.sqrt(variance)
        r[variance == 0] = 0.0
        out[i, valid] = r[valid]
    return out


def top_residuals(
    reference: Counts, current: Counts, classes: tuple[str, ...], n: int
) -> tuple[CellResidual, ...]:
    """The ``n`` cells whose share of their true class moved the most, by |adjusted residual|."""
    residuals = adjusted_residuals(reference, current)
    finite = np.argwhere(np.isfinite(residuals) & (residuals != 0))
    ranked = sorted(finite, key=lambda ij: (-abs(residuals[ij[0], ij[1]]), ij[0], ij[1]))[:n]
    out = []
    for i, j in ranked:
        ref_row, cur_row = reference[i].sum(), current[i].sum()
        out.append(
            CellResidual(
                true_class=classes[i],
                predicted_class=classes[j],
                residual=float(residuals[i, j]),
                reference_share=float(reference[i, j] / ref_row) if ref_row else float("nan"),
                current_share=float(current[i, j] / cur_row) if cur_row else float("nan"),
            )
        )
    return tuple(out)


def shift_report(
    reference: Counts,
    current: Counts,
    reference_unlabeled: Counts,
    current_unlabeled: Counts,
    classes: tuple[str, ...],
    params: ShiftParameters,
) -> ShiftReport:
    """Run all four tests between two K x K matrices sharing the class order ``classes``."""
    ref = np.asarray(reference, np.int64)
    cur = np.asarray(current, np.int64)
    error_pattern, rows, cells = error_pattern_test(ref, cur, classes, params)
    tests = {
        JOINT: homogeneity_test(JOINT, ref.ravel(), cur.ravel(), params),
        ERROR_PATTERN: error_pattern,
        LABEL_PRIOR: homogeneity_test(LABEL_PRIOR, ref.sum(axis=1), cur.sum(axis=1), params),
        PREDICTION_PRIOR: homogeneity_test(
            PREDICTION_PRIOR,
            ref.sum(axis=0) + np.asarray(reference_unlabeled, np.int64),
            cur.sum(axis=0) + np.asarray(current_unlabeled, np.int64),
            params,
        ),
    }
    return ShiftReport(tests=tests, rows=rows, cells=cells)


def missing_reference_report() -> ShiftReport:
    """Every test undecided: there is nothing to compare the current window with."""
    nan = float("nan")
    tests = {name: TestResult(name, nan, 0, nan, nan, nan, 0, 0, False, INSUFFICIENT_DATA) for name in TESTS}
    return ShiftReport(tests=tests, rows=(), cells=())
