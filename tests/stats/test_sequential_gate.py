"""The gate's confidence sequences (stats/sequential_gate.py) against an independent
implementation, and their time-uniform coverage by simulation.

``reference_*`` below are written from the formulas in docs/statistics.md ("The sequential
gate"), one value at a time in plain ``math``: the boundary z_t of the normal mixture
(Waudby-Smith et al. 2023, Theorem 2.2), the CS of a difference of means, and the ratio's CS
found by bisection on the defining inequality (the product solves the quadratic instead).
Then the property the gate rests on: over many looks at a growing sample, the share of
paths whose CS *ever* excludes the truth stays within alpha, where a fixed-sample interval
looked at as often does not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from confusion_exporter.stats import sequential as sq
from confusion_exporter.stats import sequential_gate as sg

# --------------------------------------------------------------------------------------------
# The independent implementation
# --------------------------------------------------------------------------------------------


def reference_z(t: float, alpha: float, tightest_at: float) -> float:
    # rho = sqrt((-2 ln alpha + ln(-2 ln alpha + 1)) / t*); half-width in standard errors
    # sqrt(2 (t rho^2 + 1) / (t rho^2) ln(sqrt(t rho^2 + 1) / alpha)).
    rho = math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / tightest_at)
    a = max(t, 1.0) * rho * rho
    return math.sqrt(2 * (a + 1) / a * math.log(math.sqrt(a + 1) / alpha))


def smoothed_variance(x: float, n: float) -> float:
    p = (x + 0.5) / (n + 1)
    return p * (1 - p)


def reference_ratio_bounds(
    mc: float, vc: float, nc: float, ms: float, vs: float, ns: float, z: float
) -> tuple[float, float]:
    """The q >= 0 with |mc - q ms| <= z sqrt(vc / nc + q^2 vs / ns), by bisection from the
    point estimate outwards (the inequality holds there)."""

    def inside(q: float) -> bool:
        return abs(mc - q * ms) <= z * math.sqrt(vc / nc + q * q * vs / ns)

    centre = mc / ms if ms > 0 else 0.0
    assert inside(centre)
    if inside(0.0):
        low = 0.0
    else:
        a, b = 0.0, centre  # outside at a, inside at b
        for _ in range(200):
            m = (a + b) / 2
            a, b = (a, m) if inside(m) else (m, b)
        low = b
    far = max(2 * centre, 1.0)
    while inside(far) and far < 1e12:
        far *= 2
    if inside(far):
        high = math.inf
    else:
        a, b = centre, far  # inside at a, outside at b
        for _ in range(200):
            m = (a + b) / 2
            a, b = (m, b) if inside(m) else (a, m)
        high = a
    return low, high


def reference_cell(
    xc: int, nc: int, xs: int, ns: int, params: sg.GateParameters, cells: int
) -> dict[str, float | bool]:
    alpha = params.alpha / params.rules / cells
    z = reference_z(nc + ns, alpha, params.tightest_at)
    pc, ps = xc / nc, xs / ns
    # Each version's variance at least the pooled one's.
    pooled = smoothed_variance(xc + xs, nc + ns)
    vc, vs = max(smoothed_variance(xc, nc), pooled), max(smoothed_variance(xs, ns), pooled)
    half = z * math.sqrt(vc / nc + vs / ns)
    low, high = reference_ratio_bounds(pc, vc, nc, ps, vs, ns, z)
    return {
        "difference_low": pc - ps - half,
        "difference_high": pc - ps + half,
        "relative_low": low - 1,
        "relative_high": high - 1,
        "harmful": pc - ps - half > 0,
        "within": high - 1 < params.min_relative_change or pc - ps + half < params.min_absolute_change,
    }


# --------------------------------------------------------------------------------------------
# Equality with the independent implementation
# --------------------------------------------------------------------------------------------


def test_the_boundary_is_the_normal_mixtures():
    for t in (1, 10, 333, 20_000, 1e6):
        for alpha in (0.05, 0.0025, 1e-6):
            for tightest in (1000.0, 20_000.0):
                assert float(sg.boundary(t, alpha, tightest)) == pytest.approx(
                    reference_z(t, alpha, tightest), rel=1e-12
                )


def test_the_boundary_is_narrowest_near_tightest_at():
    """Howard et al.'s rho is chosen for the narrowest *normalised* width z_t / sqrt(t) at t*:
    away from it, on either side, that width is larger than the optimum for that t would be."""
    alpha, t_star = 0.0025, 20_000.0
    for t in (t_star / 20, t_star, t_star * 20):
        here = float(sg.boundary(t, alpha, t_star))
        tuned = float(sg.boundary(t, alpha, t))  # the boundary tuned for this t
        assert tuned <= here * (1 + 1e-9)
    assert float(sg.boundary(t_star, alpha, t_star)) == pytest.approx(
        min(float(sg.boundary(t_star, alpha, s)) for s in np.geomspace(100, 1e6, 200)), rel=2e-3
    )


def test_rate_bounds_equal_the_independent_implementation_on_random_counts():
    rng = np.random.default_rng(1)
    params = sg.GateParameters(alpha=0.01)
    for _ in range(300):
        cells = int(rng.integers(1, 12))
        ns = int(rng.integers(1, 100_000))
        nc = int(rng.integers(1, 20_000))
        p = float(rng.choice([0.0, 0.001, 0.03, 0.2, 0.6]))
        xs = int(rng.binomial(ns, p))
        xc = int(rng.binomial(nc, min(1.0, p * rng.uniform(0.5, 2.0))))
        product = sg.rate_bounds(
            np.array([xc]), np.array([nc]), np.array([xs]), np.array([ns]), params, cells
        )
        expected = reference_cell(xc, nc, xs, ns, params, cells)
        for name in ("difference_low", "difference_high", "relative_low", "relative_high"):
            got = float(getattr(product, name)[0])
            if math.isinf(expected[name]):
                assert math.isinf(got), (name, xc, nc, xs, ns)
            else:
                assert got == pytest.approx(expected[name], rel=1e-7, abs=1e-9), (name, xc, nc, xs, ns)
        assert bool(product.harmful[0]) == expected["harmful"]
        assert bool(product.within[0]) == expected["within"]


def test_cost_bounds_equal_the_independent_implementation():
    """The cost of every labeled prediction expanded into an array (np.repeat), its mean and
    variance computed plainly, the floor of half an error of the dearest kind, the ratio's CS
    by bisection."""
    rng = np.random.default_rng(2)
    params = sg.GateParameters(alpha=0.001)
    for _ in range(40):
        k = int(rng.integers(2, 5))
        cost = rng.choice([0.0, 1.0, 2.0, 5.0, 50.0], size=(k, k))
        np.fill_diagonal(cost, 0.0)
        cost[0, 1] = max(cost[0, 1], 1.0)  # at least one error costs something
        stable = rng.integers(0, 400, size=(k, k)) * (rng.random((k, k)) < 0.8)
        canary = rng.integers(0, 400, size=(k, k)) * (rng.random((k, k)) < 0.8)
        np.fill_diagonal(stable, rng.integers(500, 5000, k))
        np.fill_diagonal(canary, rng.integers(500, 5000, k))
        stable[0, 1] = max(stable[0, 1], 1)  # a stable cost above 0: the ratio is defined
        moments = []
        for matrix in (stable, canary, stable + canary):
            values = np.repeat(cost.ravel(), matrix.ravel())
            n = len(values)
            mean = sum(values) / n
            variance = sum((v - mean) ** 2 for v in values) / (n - 1)
            share = 0.5 / (n + 1)
            moments.append((mean, max(variance, cost.max() ** 2 * share * (1 - share)), n))
        (ms, vs, ns), (mc, vc, nc), (_, pooled, _) = moments
        vs, vc = max(vs, pooled), max(vc, pooled)  # each at least the pooled variance
        z = reference_z(ns + nc, params.alpha / 2, params.tightest_at)
        low, high = reference_ratio_bounds(mc, vc, nc, ms, vs, ns, z)
        got = sg.cost_bounds(stable, canary, cost, params)
        assert float(got.increase) == pytest.approx(mc / ms - 1, rel=1e-9)
        assert float(got.low) == pytest.approx(low - 1, rel=1e-7, abs=1e-9)
        assert float(got.high) == pytest.approx(high - 1, rel=1e-7, abs=1e-9)
        assert bool(got.harmful) == (low > 1.15)
        assert bool(got.within) == (high < 1.15)


def test_stacked_cell_counts_equal_cell_counts():
    rng = np.random.default_rng(3)
    for k in (2, 3, 5):
        params = sq.SequentialParameters(false_discovery_rates=True)
        cells = sq.cells_of(k, params)
        stack = rng.integers(0, 50, size=(7, k, k))
        x, n = sg.stacked_cell_counts(cells, stack)
        for i in range(len(stack)):
            ex, en = sq.cell_counts(cells, stack[i])
            assert np.array_equal(x[i], ex) and np.array_equal(n[i], en)


def test_the_sentence_names_the_cell_and_its_interval():
    cells = sq.cells_of(2, sq.SequentialParameters())
    x_s, n_s = np.array([2940, 360]), np.array([98000, 2000])
    x_c, n_c = np.array([3381, 360]), np.array([98000, 2000])
    bounds = sg.rate_bounds(x_c, n_c, x_s, n_s, sg.GateParameters(alpha=0.01), len(cells))
    text = sg.sentence(cells[0], ("legit", "fraud"), bounds, 0)
    low, high = 100 * float(bounds.relative_low[0]), 100 * float(bounds.relative_high[0])
    assert text == f"legit predicted as fraud: 3.00% -> 3.45%, +15% [{low:+.0f}%, {high:+.0f}%]"
    assert 0 < low < 15 < high


# --------------------------------------------------------------------------------------------
# Time-uniform coverage
# --------------------------------------------------------------------------------------------


def _paths(rng, p_c, p_s, share, per_look, looks, paths):  # type: ignore[no-untyped-def]
    """Cumulative (x_c, n_c, x_s, n_s) per look and path: binomial streams of a cell."""
    n_c = np.cumsum(rng.poisson(per_look * share, (looks, paths)), axis=0)
    n_s = np.cumsum(rng.poisson(per_look * (1 - share), (looks, paths)), axis=0)
    dn_c = np.diff(n_c, axis=0, prepend=0)
    dn_s = np.diff(n_s, axis=0, prepend=0)
    x_c = np.cumsum(rng.binomial(dn_c, p_c), axis=0)
    x_s = np.cumsum(rng.binomial(dn_s, p_s), axis=0)
    return x_c, n_c, x_s, n_s


@pytest.mark.parametrize(
    ("p_s", "ratio", "share", "per_look"),
    [
        (0.03, 1.0, 0.05, 2500),  # the seed incident's false-positive rate, a 5% canary
        (0.03, 1.15, 0.10, 2500),  # the seed change itself: the CS must cover +15%
        (0.18, 1.0, 0.05, 50),  # fraud's miss rate: 2% of the traffic, few trials a look
        (0.005, 1.0, 0.5, 400),  # a rare error, an even split
    ],
)
def test_the_cs_ever_excludes_the_truth_at_most_alpha_of_the_time(p_s, ratio, share, per_look):
    """200 looks at a growing sample (every 5 minutes for 16 hours), 4,000 paths. The share
    of paths whose CS excludes the true difference (and, separately, the true ratio) at ANY
    look stays within alpha, with 3 standard errors of simulation tolerance; a fixed-sample
    95% interval looked at as often excludes it far more often (the test can fail)."""
    rng = np.random.default_rng(int(p_s * 1e4) + int(100 * share))
    alpha, looks, paths = 0.05, 200, 4000
    p_c = p_s * ratio
    x_c, n_c, x_s, n_s = _paths(rng, p_c, p_s, share, per_look, looks, paths)
    params = sg.GateParameters(alpha=alpha, rules=1)
    ready = np.minimum(n_c, n_s) > 0
    b = sg.rate_bounds(x_c, n_c, x_s, n_s, params, 1)
    truth = p_c - p_s
    missed = ready & ((b.difference_low > truth) | (b.difference_high < truth))
    missed_ratio = ready & ((b.relative_low > ratio - 1) | (b.relative_high < ratio - 1))
    tolerance = 3 * math.sqrt(alpha * (1 - alpha) / paths)
    assert missed.any(axis=0).mean() <= alpha + tolerance
    assert missed_ratio.any(axis=0).mean() <= alpha + tolerance
    # The same looks with the fixed-sample interval (z = 1.96): far past alpha.
    with np.errstate(divide="ignore", invalid="ignore"):
        pc, ps = x_c / n_c, x_s / n_s
        se = np.sqrt(pc * (1 - pc) / n_c + ps * (1 - ps) / n_s)
    fixed = ready & (np.abs(pc - ps - truth) > 1.96 * se)
    assert fixed.any(axis=0).mean() > 3 * alpha


def test_the_cost_cs_ever_excludes_the_truth_at_most_alpha_of_the_time():
    """The cost rule's ratio CS, on the seed incident's classifier with a fraud-like cost
    matrix (a missed fraud costs 50, a false positive 2): skewed costs, 200 looks."""
    rng = np.random.default_rng(5)
    alpha, looks, paths, per_look, share = 0.05, 200, 2000, 2500, 0.1
    priors = np.array([0.98, 0.02])
    confusion = np.array([[0.97, 0.03], [0.18, 0.82]])
    cost = np.array([[0.0, 2.0], [50.0, 0.0]])
    truth = 0.0  # identical versions: the ratio is 1
    stable = np.zeros((paths, 2, 2), np.int64)
    canary = np.zeros((paths, 2, 2), np.int64)
    params = sg.GateParameters(alpha=alpha, rules=1)
    ever = np.zeros(paths, bool)
    for _ in range(looks):
        for total, n in ((stable, per_look * (1 - share)), (canary, per_look * share)):
            rows = rng.multinomial(rng.poisson(n, paths), priors)
            for i in range(2):
                total[:, i] += rng.multinomial(rows[:, i], confusion[i])
        b = sg.cost_bounds(stable, canary, cost, params)
        ever |= b.testable & ((b.low > truth) | (b.high < truth))
    assert ever.mean() <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / paths)


def test_the_module_imports_no_scipy():
    import subprocess
    import sys

    code = (
        "import sys, confusion_exporter.stats.sequential_gate; "
        "sys.exit(1 if any(m.startswith('scipy') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
