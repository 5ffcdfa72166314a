"""classification_metrics against scikit-learn on random matrices (pure, no database)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
)

from confusion_exporter.stats.classification import classification_metrics


def expand(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn a matrix back into label vectors, the form scikit-learn takes."""
    true, pred = np.nonzero(matrix)
    counts = matrix[true, pred]
    return np.repeat(true, counts), np.repeat(pred, counts)


matrices = st.integers(1, 50).flatmap(
    lambda k: arrays(np.int64, (k, k), elements=st.one_of(st.just(0), st.integers(0, 40)))
)


@settings(max_examples=200, deadline=None)
@given(matrix=matrices)
def test_metrics_equal_sklearn(matrix):
    m = classification_metrics(matrix)
    labels = list(range(matrix.shape[0]))
    if matrix.sum() == 0:
        assert np.isnan(m.accuracy) and np.isnan(m.macro_f1) and np.isnan(m.balanced_accuracy)
        assert np.isnan(m.precision).all() and np.isnan(m.recall).all() and np.isnan(m.f1).all()
        return
    y_true, y_pred = expand(matrix)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=np.nan
    )
    np.testing.assert_allclose(m.precision, precision, equal_nan=True)
    np.testing.assert_allclose(m.recall, recall, equal_nan=True)
    np.testing.assert_array_equal(m.support, support)
    present = sorted(set(y_true) | set(y_pred))
    np.testing.assert_allclose(m.f1[present], f1[present])
    assert np.isnan(m.f1[[c for c in labels if c not in present]]).all()
    assert m.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert m.macro_f1 == pytest.approx(f1_score(y_true, y_pred, labels=present, average="macro"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes predicted but never true
        assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_rejects_non_square_input():
    with pytest.raises(ValueError, match="square"):
        classification_metrics(np.zeros((2, 3), dtype=np.int64))
