"""The canary gate's confidence sequences: anytime-valid comparisons of canary and stable.

A pipeline polls ``gate`` every few minutes during a rollout, each poll on all the labeled
predictions since the same start. A fixed-sample test looked at 24 times fails an identical
canary far more often than its alpha (docs/statistics.md, "The sequential gate", measures
it); a confidence sequence (CS) instead holds its level over every look at once:
P(the truth is ever outside the CS) <= alpha, however often and whenever one looks.

The CS here is the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy
and Ramdas ("Time-uniform central limit theory and asymptotic confidence sequences", 2023,
Theorem 2.2: the normal-mixture boundary of Robbins and of Howard et al. 2021 with a plug-in
variance). For a linear combination ``theta = mean_c - q mean_s`` of the two versions' means,
estimated by the sample means over t = n_c + n_s observations:

  theta_hat +- sqrt(v) z_t,    v = var_c / n_c + q^2 var_s / n_s,
  z_t = sqrt((t rho^2 + 1) / (t rho^2) ln((t rho^2 + 1) / alpha^2)),
  rho^2 = (2 ln(1/alpha) + ln(1 + 2 ln(1/alpha))) / t_star,

where ``t_star`` is the number of observations at which the boundary is narrowest (the
choice is measured in docs/statistics.md). Before ``t_star`` it is wide (that is what makes
early looks safe), after it widens only like sqrt(ln t). Why this one: it is a function of
the cumulative counts alone, so a stateless poll computes it from the counts since the
start; it takes two versions with unequal, growing samples directly; and one boundary serves
rates and mean costs. It is asymptotic, and was not measured against an exact CS (empirical
Bernstein, betting, a beta-binomial mixture): its coverage at the gate's sample sizes is
checked by simulation instead (tests/stats/test_sequential_gate.py).

The ratio ``q`` of the two means (the relative change is q - 1) gets a Fieller-type CS: the
set of q whose combination's CS contains 0. At the true q that is exactly the event "the
linear CS covers its truth", so the set inherits the time-uniform level; it is the solution
of a quadratic inequality, an interval [low, high] (high = inf when the stable mean is not
surely above 0).

Pure numpy and ``math`` (the exporter's run path must not import scipy.stats).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .sequential import CONFUSION, ERROR, Cell, describe

Floats = NDArray[np.float64]

# Where the boundary is narrowest, in labeled predictions of both versions together (per
# cell: of the cell's true class). Measured in docs/statistics.md ("The sequential gate"):
# from 1,000 to 100,000 the seed incident's median time to fail moves from 12.2 h to 9.4 h
# and identical canaries fail 0-0.2%; 20,000 is about 40 minutes of legit labels at 30,000 an hour, the
# scale at which a rollout's first verdicts are due.
TIGHTEST_AT = 20000.0

# The fail rules compared in the study ("shown harmful"): the CS of the increase excludes 0,
# or excludes the margin. The gate uses EXCLUDES_ZERO (docs/statistics.md says why).
EXCLUDES_ZERO = "excludes_zero"
EXCLUDES_MARGIN = "excludes_margin"


def boundary(t: float | Floats, alpha: float, tightest_at: float = TIGHTEST_AT) -> Floats:
    """z_t: the half-width of the CS in standard errors after ``t`` observations."""
    log_inverse = 2 * math.log(1 / alpha)
    rho2 = (log_inverse + math.log(1 + log_inverse)) / tightest_at
    trho = np.maximum(np.asarray(t, np.float64), 1.0) * rho2
    return np.sqrt((trho + 1) / trho * np.log((trho + 1) / alpha**2))  # type: ignore[no-any-return]


def fieller(
    mean_c: Floats,
    var_c: Floats,
    n_c: Floats,
    mean_s: Floats,
    var_s: Floats,
    n_s: Floats,
    alpha: float,
    tightest_at: float = TIGHTEST_AT,
) -> tuple[Floats, Floats]:
    """The CS of q = mean_c / mean_s (each non-negative): the q >= 0 with
    (mean_c - q mean_s)^2 <= z^2 (var_c / n_c + q^2 var_s / n_s). Returns (low, high)."""
    z2 = boundary(n_c + n_s, alpha, tightest_at) ** 2
    # f(q) = a q^2 - 2 b q + c <= 0; f(mean_c / mean_s) < 0, so the set is never empty.
    a = mean_s**2 - z2 * var_s / n_s
    b = mean_c * mean_s
    c = mean_c**2 - z2 * var_c / n_c
    root = np.sqrt(np.maximum(b * b - a * c, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        # f(0) = c > 0: 0 is excluded and the low end is the smaller root (a > 0), the one
        # positive root (a < 0) or the line's root (a = 0): c / (b + root) in every case
        # (the product of the roots is c / a), without the cancellation of (b - root) / a.
        low = np.where(c > 0, c / (b + root), 0.0)
        # a > 0 (the stable mean surely above 0): bounded above; otherwise no ratio is too large.
        high = np.where(a > 0, (b + root) / np.where(a > 0, a, 1.0), np.inf)
    return low, high


def stacked_cell_counts(cells: Sequence[Cell], matrices: NDArray[np.int64]) -> tuple[Floats, Floats]:
    """stats/sequential.cell_counts over (..., K, K) matrices at once: successes and trials of
    each cell, shape (..., cells). The study runs thousands of paths per look; the gate runs
    one matrix through cell_counts itself."""
    m = np.asarray(matrices, np.float64)
    rows, cols = m.sum(axis=-1), m.sum(axis=-2)
    xs, ns = [], []
    for cell in cells:
        i, j = cell.true_class, cell.predicted_class
        if cell.kind == CONFUSION:
            xs.append(m[..., i, j])
            ns.append(rows[..., i])
        elif cell.kind == ERROR:
            xs.append(rows[..., i] - m[..., i, i])
            ns.append(rows[..., i])
        else:
            xs.append(m[..., i, j])
            ns.append(cols[..., j])
    return np.stack(xs, axis=-1), np.stack(ns, axis=-1)


@dataclass(frozen=True)
class GateParameters:
    """The gate's rules. Names and defaults as stats/sequential.SequentialParameters (the
    margin) and the monitor's config (alpha, max_cost_increase)."""

    alpha: float = 0.001  # for the gate as a whole: alpha / 2 the error rates, alpha / 2 the cost
    min_relative_change: float = 0.10
    min_absolute_change: float = 0.001
    max_cost_increase: float = 0.15
    tightest_at: float = TIGHTEST_AT
    fail_rule: str = EXCLUDES_ZERO
    rules: int = 2

    def cell_alpha(self, cells: int) -> float:
        return self.alpha / self.rules / max(cells, 1)

    @property
    def cost_alpha(self) -> float:
        return self.alpha / self.rules


def _rate_variance(x: Floats, n: Floats) -> Floats:
    """p(1 - p) with half a success of continuity: a cell without any success still has a
    variance (a zero count is not a zero rate known exactly)."""
    p = (x + 0.5) / (n + 1.0)
    return p * (1 - p)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RateBounds:
    """Per cell (any array shape): the two rates, the CS of their difference, the Fieller CS
    of the relative change, the margin and the decisions."""

    stable_rate: Floats
    canary_rate: Floats
    difference_low: Floats
    difference_high: Floats
    relative_change: Floats
    relative_low: Floats  # the CS of canary / stable - 1
    relative_high: Floats
    margin: Floats  # absolute: max(min_relative_change x stable rate, min_absolute_change)
    harmful: NDArray[np.bool_]
    within: NDArray[np.bool_]  # shown within the margin
    testable: NDArray[np.bool_]  # both versions have trials of the cell's class


def rate_bounds(
    x_c: ArrayLike, n_c: ArrayLike, x_s: ArrayLike, n_s: ArrayLike, params: GateParameters, cells: int
) -> RateBounds:
    """The error-rate rule for cells with x successes of n trials per version, each at
    alpha / rules / cells (Bonferroni)."""
    x_c, n_c, x_s, n_s = (np.asarray(v, np.float64) for v in (x_c, n_c, x_s, n_s))  # type: ignore[assignment]
    alpha = params.cell_alpha(cells)
    testable = (n_c > 0) & (n_s > 0)
    nc, ns = np.maximum(n_c, 1.0), np.maximum(n_s, 1.0)
    p_c, p_s = x_c / nc, x_s / ns
    # Each version's variance is at least the pooled one's: a canary with few trials whose
    # count came out low by chance would otherwise get a small variance from that very luck
    # and a CS too narrow on that side (measured: 5.8% of paths at alpha 5% with a 5%
    # canary, in its first looks). Under no change the pooled rate is the better estimate of
    # both; under a change this is only wider, never narrower.
    pooled = _rate_variance(x_c + x_s, n_c + n_s)
    v_c = np.maximum(_rate_variance(x_c, n_c), pooled)
    v_s = np.maximum(_rate_variance(x_s, n_s), pooled)
    half = boundary(n_c + n_s, alpha, params.tightest_at) * np.sqrt(v_c / nc + v_s / ns)
    d_low, d_high = p_c - p_s - half, p_c - p_s + half
    q_low, q_high = fieller(p_c, v_c, nc, p_s, v_s, ns, alpha, params.tightest_at)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.where(p_s > 0, p_c / p_s - 1, np.where(p_c > 0, np.inf, 0.0))
    margin = np.maximum(params.min_relative_change * p_s, params.min_absolute_change)
    if params.fail_rule == EXCLUDES_ZERO:
        harmful = d_low > 0
    elif params.fail_rule == EXCLUDES_MARGIN:
        # Above the margin both ways: relatively and by the absolute floor.
        harmful = (q_low - 1 > params.min_relative_change) & (d_low > params.min_absolute_change)
    else:
        raise ValueError(f"unknown fail rule {params.fail_rule!r}")
    # Within the margin either way: relatively (the Fieller bound, which carries the stable
    # rate's own uncertainty) or below the absolute floor.
    within = (q_high - 1 < params.min_relative_change) | (d_high < params.min_absolute_change)
    return RateBounds(
        stable_rate=np.where(n_s > 0, p_s, np.nan),
        canary_rate=np.where(n_c > 0, p_c, np.nan),
        difference_low=d_low,
        difference_high=d_high,
        relative_change=change,
        relative_low=q_low - 1,
        relative_high=q_high - 1,
        margin=margin,
        harmful=harmful & testable,
        within=within & testable,
        testable=testable,
    )


@dataclass(frozen=True)
class CostBounds:
    """The cost rule: the CS of the relative increase of the mean error cost per labeled
    prediction, at alpha / rules (arrays over the matrices' leading dimensions)."""

    stable_cost: Floats
    canary_cost: Floats
    increase: Floats
    low: Floats
    high: Floats
    harmful: NDArray[np.bool_]  # the increase is shown above max_cost_increase
    within: NDArray[np.bool_]  # ... shown below it
    testable: NDArray[np.bool_]  # at least 2 labeled predictions each


def _cost_moments(counts: Floats, cost: Floats) -> tuple[Floats, Floats, Floats]:
    """n, mean and variance of the per-prediction cost of (..., K, K) matrices, the variance
    floored at that of half an error of the dearest kind (as _rate_variance: a window
    without errors does not know its cost to be exactly 0)."""
    n = counts.sum(axis=(-2, -1))
    safe = np.maximum(n, 1.0)
    mean = (counts * cost).sum(axis=(-2, -1)) / safe
    spread = (counts * (cost - mean[..., None, None]) ** 2).sum(axis=(-2, -1))
    variance = spread / np.maximum(n - 1, 1.0)
    share = 0.5 / (n + 1)
    floor = float(np.max(cost)) ** 2 * share * (1 - share)
    return n, mean, np.maximum(variance, floor)


def cost_bounds(
    stable: NDArray[np.int64], canary: NDArray[np.int64], cost: Floats, params: GateParameters
) -> CostBounds:
    """``stable`` and ``canary``: (..., K, K) matrices in the same class order as ``cost``."""
    cost = np.asarray(cost, np.float64)
    stable_f, canary_f = np.asarray(stable, np.float64), np.asarray(canary, np.float64)
    n_s, m_s, v_s = _cost_moments(stable_f, cost)
    n_c, m_c, v_c = _cost_moments(canary_f, cost)
    # At least the pooled variance, as for the rates (a canary that has not yet seen its
    # first costly error would otherwise be judged as if it knew it had none).
    pooled = _cost_moments(stable_f + canary_f, cost)[2]
    v_s, v_c = np.maximum(v_s, pooled), np.maximum(v_c, pooled)
    testable = (n_s >= 2) & (n_c >= 2)
    ns, nc = np.maximum(n_s, 1.0), np.maximum(n_c, 1.0)
    low, high = fieller(m_c, v_c, nc, m_s, v_s, ns, params.cost_alpha, params.tightest_at)
    limit = 1 + params.max_cost_increase
    with np.errstate(divide="ignore", invalid="ignore"):
        increase = np.where(m_s > 0, m_c / m_s - 1, np.where(m_c > 0, np.inf, np.nan))
    nan = np.full(np.shape(m_s), np.nan)
    return CostBounds(
        stable_cost=np.where(n_s > 0, m_s, nan),
        canary_cost=np.where(n_c > 0, m_c, nan),
        increase=np.where(testable, increase, nan),
        low=np.where(testable, low - 1, nan),
        high=np.where(testable, high - 1, nan),
        harmful=testable & (low > limit),
        within=testable & (high < limit),
        testable=testable,
    )


def sentence(cell: Cell, classes: Sequence[str], bounds: RateBounds, index: int) -> str:
    """ "legit predicted as fraud: 3.00% -> 3.45%, +15% [+4%, +27%]"."""
    stable, canary = float(bounds.stable_rate[index]), float(bounds.canary_rate[index])
    change = float(bounds.relative_change[index])
    low, high = float(bounds.relative_low[index]), float(bounds.relative_high[index])

    def pct(value: float, sign: str = "") -> str:
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "+inf" if value > 0 else "-inf"
        return f"{100 * value:{sign}.0f}%"

    rates = f"{100 * stable:.2f}% -> {100 * canary:.2f}%" if not math.isnan(stable + canary) else "n/a"
    return f"{describe(cell, classes)}: {rates}, {pct(change, '+')} [{pct(low, '+')}, {pct(high, '+')}]"
