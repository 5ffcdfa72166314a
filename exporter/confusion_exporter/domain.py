"""The names every layer shares: slices, window counts, the label values that stand for
"no value" and "the rest", and the reasons a row is left out of a matrix.

The lowest layer with windows.py: it imports nothing else of the package, so the database
readers (source/), the statistics (stats/) and the outputs may all use it without importing
each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .windows import Window

ALL = "__all__"  # the label value when a source has no version or segment column
OTHER = "__other__"  # the class that absorbs classes beyond the cap
NULL = "__null__"  # the label value of a NULL model, version or segment


@dataclass(frozen=True)
class SliceKey:
    """What one matrix is about: a model version, in one segment."""

    model: str
    version: str
    segment: str


@dataclass(frozen=True)
class WindowCounts:
    """Counts of one slice in one window; ``matrix[i, j]`` is true class i predicted as j."""

    window: Window
    classes: tuple[str, ...]
    matrix: NDArray[np.int64]
    unlabeled: NDArray[np.int64]
    rejected: Mapping[str, int]
    folded: int
    label_delay_sum_seconds: float = float("nan")  # over labeled predictions; NaN without labeled_at

    @property
    def mean_label_delay_seconds(self) -> float:
        labeled = self.labeled_total
        return self.label_delay_sum_seconds / labeled if labeled else float("nan")

    @property
    def labeled_total(self) -> int:
        return int(self.matrix.sum())

    @property
    def unlabeled_total(self) -> int:
        return int(self.unlabeled.sum())


# A fixed set, so every reason can be exported as 0.
FUTURE_TIMESTAMP = "future_timestamp"
NON_FINITE_TIMESTAMP = "non_finite_timestamp"  # 'infinity' or '-infinity': no instant at all
MISSING_TIMESTAMP = "missing_timestamp"  # predicted_at NULL: no window can hold the row
MISSING_MODEL = "missing_model"  # NULL or blank
MISSING_PREDICTED_CLASS = "missing_predicted_class"
LABEL_WITHOUT_PREDICTION = "label_without_prediction"
EMPTY_TRUE_CLASS = "empty_true_class"
LABEL_BEFORE_PREDICTION = "label_before_prediction"  # earlier than future_tolerance allows
UNKNOWN_CLASS = "unknown_class"  # outside the configured classes: decided in matrices.py
REJECT_REASONS = (
    FUTURE_TIMESTAMP,
    NON_FINITE_TIMESTAMP,
    MISSING_TIMESTAMP,
    MISSING_MODEL,
    MISSING_PREDICTED_CLASS,
    LABEL_WITHOUT_PREDICTION,
    EMPTY_TRUE_CLASS,
    LABEL_BEFORE_PREDICTION,
    UNKNOWN_CLASS,
)


@dataclass(frozen=True)
class ConfidenceCounts:
    """Scored, labeled predictions of one slice in one window, aggregated by score bin.

    ``n[outcome, b]`` and ``score_sum[outcome, b]`` per outcome (0 incorrect, 1 correct) and
    bin; ``high[outcome]`` counts scores at or above the high-confidence threshold.
    """

    bins: int
    n: NDArray[np.int64]
    score_sum: NDArray[np.float64]
    high: NDArray[np.int64]
    high_threshold: float
    invalid: int = 0  # scores outside [0, 1], left out

    @classmethod
    def empty(cls, bins: int, high_threshold: float) -> ConfidenceCounts:
        return cls(
            bins,
            np.zeros((2, bins), np.int64),
            np.zeros((2, bins)),
            np.zeros(2, np.int64),
            high_threshold,
        )


@dataclass(frozen=True)
class ThresholdMatrix:
    """The 2 x 2 matrix at ``threshold``, in the order (negative, positive) for rows and columns."""

    threshold: float
    classes: tuple[str, str]  # (negative, positive)
    matrix: NDArray[np.int64]
