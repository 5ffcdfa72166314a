"""The business cost of a confusion matrix: what its errors cost per labeled prediction.

``cost[i, j]`` is the cost of predicting class j when the truth is class i. Unlisted
cells cost 0 on the diagonal and 1 elsewhere, so with no matrix configured the mean cost
is the error rate (1 - accuracy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

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
