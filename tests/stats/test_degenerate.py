"""Zero classes (a slice whose rows were all rejected) and one class are valid input of every
statistic and of the report's matrix shares: figures are NaN or "insufficient data", never an
exception."""

from __future__ import annotations

import math

import numpy as np
import pytest

from confusion_exporter.report import matrix_share
from confusion_exporter.stats.classification import classification_metrics
from confusion_exporter.stats.cost import cost_matrix, mean_cost, relative_increase
from confusion_exporter.stats.shift import ShiftParameters, shift_report


@pytest.mark.parametrize("k", [0, 1])
def test_zero_and_one_class_matrices(k: int) -> None:
    empty = np.zeros((k, k), np.int64)
    unlabeled = np.zeros(k, np.int64)
    metrics = classification_metrics(empty)
    assert math.isnan(metrics.accuracy) and math.isnan(metrics.macro_f1) and metrics.labeled == 0
    report = shift_report(empty, empty, unlabeled, unlabeled, tuple("a" * k), ShiftParameters(min_samples=1))
    assert {t.state for t in report.tests.values()} == {"insufficient_data"}
    costs = cost_matrix(["a"] * k, {})
    assert costs.shape == (k, k)
    assert math.isnan(mean_cost(empty, costs))
    assert math.isnan(relative_increase(mean_cost(empty, costs), 0.1))
    shares = matrix_share(empty.tolist())
    assert shares is not None and shares.shape == (k, k) and np.isnan(shares).all()


def test_matrix_share_of_a_filled_one_class_matrix() -> None:
    shares = matrix_share([[5]])
    assert shares is not None and shares.tolist() == [[1.0]]
