"""The business cost of a confusion matrix: what its errors cost per labeled prediction.

``cost[i, j]`` is the cost of predicting class j when the truth is class i. Unlisted
cells cost 0 on the diagonal and 1 elsewhere, so with no matrix configured the mean cost
is the error rate (1 - accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special  # the t distribution; not scipy.stats (75 MB, see stats/shift.py)

DEFAULT_ERROR_COST = 1.0

CostSpec = Mapping[str, Mapping[str, float]]  # true class -> predicted class -> cost


def cost_matrix(classes: Sequence[str], spec: CostSpec) -> NDArray[np.float64]:
    """The K x K cost matrix for ``classes`` (matrix order), defaults where ``spec`` is silent."""
    k = len(classes)
    cost = np.full((k, k), DEFAULT_ERROR_COST)
    np.fill_diagonal(cost, 0.0)
    index = {name: i for i, name in enumerate(classes)}
    for true_class, row in spec.items():
        for predicted_class, value in row.items():
            if true_class in index and predicted_class in index:
                cost[index[true_class], index[predicted_class]] = value
    return cost


def mean_cost(matrix: NDArray[np.int64], cost: NDArray[np.float64]) -> float:
    """Mean cost per labeled prediction; NaN without labeled predictions."""
    labeled = int(np.asarray(matrix).sum())
    if labeled == 0:
        return float("nan")
    return float((np.asarray(matrix, np.float64) * cost).sum() / labeled)


def relative_increase(current: float, reference: float) -> float:
    """(current - reference) / reference; NaN where it is undefined (no reference cost)."""
    if not np.isfinite(current) or not np.isfinite(reference) or reference <= 0:
        return float("nan")
    return (current - reference) / reference


@dataclass(frozen=True)
class CostMoments:
    """Mean and sample variance of the per-prediction cost over one window's labeled predictions.

    A labeled prediction in cell (i, j) costs ``cost[i, j]``, so the cost is a discrete variable
    whose distribution the matrix's cell counts give exactly: no rows are needed.
    """

    n: int
    mean: float
    variance: float  # with n - 1 in the denominator; NaN below 2 labeled predictions


def cost_moments(matrix: NDArray[np.int64], cost: NDArray[np.float64]) -> CostMoments:
    counts = np.asarray(matrix, np.float64)
    n = int(counts.sum())
    if n == 0:
        return CostMoments(0, float("nan"), float("nan"))
    mean = float((counts * cost).sum() / n)
    if n < 2:
        return CostMoments(n, mean, float("nan"))
    # Centred before squaring: the textbook E[x^2] - mean^2 loses the digits of a small variance.
    variance = float((counts * (cost - mean) ** 2).sum() / (n - 1))
    return CostMoments(n, mean, variance)


@dataclass(frozen=True)
class CostIncreaseTest:
    """Is the current mean cost more than ``limit`` above the reference's, beyond noise?

    ``p_value`` is one-sided, of H0: current mean <= (1 + limit) x reference mean (Welch's t);
    ``lower_bound`` is the one-sided 1 - alpha confidence bound of the relative increase (the
    test inverted: the smallest increase that alpha does not reject), so
    ``lower_bound > limit`` exactly when ``p_value < alpha``.
    """

    increase: float  # the raw relative increase (current - reference) / reference
    statistic: float
    dof: float
    p_value: float
    lower_bound: float


def welch_greater(current: CostMoments, reference: CostMoments, ratio: float) -> tuple[float, float, float]:
    """Welch's t of ``current.mean - ratio * reference.mean`` (t, dof, one-sided p of "> 0").

    Scaling the reference's costs by ``ratio`` scales its variance by ``ratio**2``, so this is
    scipy.stats.ttest_ind(current_costs, ratio * reference_costs, equal_var=False,
    alternative="greater") computed from the moments alone.
    """
    difference = current.mean - ratio * reference.mean
    v_current = current.variance / current.n
    v_reference = ratio**2 * reference.variance / reference.n
    variance = v_current + v_reference
    if variance <= 0:
        # Both windows' costs are constant (e.g. no errors at all): the difference is exact.
        return (math.inf if difference > 0 else 0.0), math.inf, (0.0 if difference > 0 else 1.0)
    dof = variance**2 / (v_current**2 / (current.n - 1) + v_reference**2 / (reference.n - 1))
    statistic = difference / math.sqrt(variance)
    return statistic, dof, float(special.stdtr(dof, -statistic))


def cost_increase_test(
    reference: NDArray[np.int64],
    current: NDArray[np.int64],
    cost: NDArray[np.float64],
    limit: float,
    alpha: float,
) -> CostIncreaseTest:
    """Test the current window's mean cost against ``(1 + limit)`` x the reference's (same classes)."""
    ref, cur = cost_moments(reference, cost), cost_moments(current, cost)
    increase = relative_increase(cur.mean, ref.mean)
    if min(ref.n, cur.n) < 2:
        return CostIncreaseTest(increase, float("nan"), float("nan"), float("nan"), float("nan"))
    statistic, dof, p_value = welch_greater(cur, ref, 1 + limit)
    return CostIncreaseTest(increase, statistic, dof, p_value, _ratio_lower_bound(cur, ref, alpha) - 1)


def _ratio_lower_bound(current: CostMoments, reference: CostMoments, alpha: float) -> float:
    """The smallest ratio r >= 0 that the one-sided test of current > r x reference does not
    reject at ``alpha`` (a Fieller-type bound, with Welch's dof).

    t(r) falls as r grows (dt/dr < 0 for non-negative means), so the test's p rises with r and
    bisection finds the crossing. 0 when even r = 0 is not rejected (the current cost is not
    surely above 0); +inf when no r is (a reference without any cost, against a current one
    surely above 0).
    """

    def rejected(ratio: float) -> bool:
        return welch_greater(current, reference, ratio)[2] < alpha

    if not rejected(0.0):
        return 0.0
    high = max(1.0, 2 * current.mean / reference.mean) if reference.mean > 0 else 1.0
    for _ in range(64):
        if not rejected(high):
            break
        high *= 2
    else:
        return math.inf
    low = 0.0
    for _ in range(100):  # to a relative precision of 2^-52 and beyond
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if rejected(middle) else (low, middle)
    return high
