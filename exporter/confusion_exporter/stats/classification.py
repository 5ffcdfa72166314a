"""Per-class and overall classification metrics from a confusion matrix.

Undefined values (a class never predicted has no precision) are NaN, not 0: a 0
would read as "terrible" on a dashboard when the truth is "no evidence".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class ClassificationMetrics:
    """Metrics of one K×K matrix whose rows are true classes and columns predicted classes."""

    precision: NDArray[np.float64]
    recall: NDArray[np.float64]
    f1: NDArray[np.float64]
    support: NDArray[np.int64]
    predicted: NDArray[np.int64]
    accuracy: float
    macro_f1: float
    balanced_accuracy: float
    labeled: int


def _ratio(numerator: NDArray[np.float64], denominator: NDArray[np.float64]) -> NDArray[np.float64]:
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean(values: NDArray[np.float64]) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def classification_metrics(matrix: NDArray[np.int64]) -> ClassificationMetrics:
    """Compute precision, recall, F1 and support per class, and accuracy, macro-F1, balanced accuracy.

    Macro-F1 averages over the classes that occur as truth or prediction; balanced accuracy
    over the classes that occur as truth (scikit-learn's definitions).
    """
    m = np.asarray(matrix, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {m.shape}")
    tp = np.diag(m).astype(np.float64)
    support = m.sum(axis=1)
    predicted = m.sum(axis=0)
    precision = _ratio(tp, predicted.astype(np.float64))
    recall = _ratio(tp, support.astype(np.float64))
    f1 = _ratio(2 * tp, (support + predicted).astype(np.float64))
    labeled = int(m.sum())
    return ClassificationMetrics(
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        predicted=predicted,
        accuracy=float(tp.sum() / labeled) if labeled else float("nan"),
        macro_f1=_nanmean(f1),
        balanced_accuracy=_nanmean(recall),
        labeled=labeled,
    )
