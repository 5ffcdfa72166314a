"""Confidence and calibration of a window, from per-bin aggregates the database computed.

The score is the model's probability for the class it predicted. Bins split [0, 1] into
equal widths; per bin and outcome (correct or not) the database returns the count and the
sum of scores, so nothing here needs a row. Expected calibration error (Guo et al. 2017):
ECE = sum over bins of (n_b / N) |accuracy_b - mean confidence_b| = sum_b |correct_b - sum of
scores_b| / N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..domain import ConfidenceCounts

INCORRECT, CORRECT = 0, 1


@dataclass(frozen=True)
class ReliabilityBin:
    lower: float
    upper: float
    n: int
    accuracy: float  # NaN for an empty bin
    mean_confidence: float


@dataclass(frozen=True)
class ConfidenceSummary:
    """What a window's confidence says: calibration, and how sure the model was when wrong."""

    scored: int
    calibration_error: float
    mean_confidence_correct: float
    mean_confidence_incorrect: float
    high_confidence_errors: int
    high_confidence_error_share: float  # of all errors
    high_threshold: float
    invalid: int
    reliability: tuple[ReliabilityBin, ...]


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def summarize(counts: ConfidenceCounts) -> ConfidenceSummary:
    n_bin = counts.n.sum(axis=0)
    correct_bin = counts.n[CORRECT]
    score_bin = counts.score_sum.sum(axis=0)
    total = int(n_bin.sum())
    ece = float(np.abs(correct_bin - score_bin).sum() / total) if total else float("nan")
    width = 1.0 / counts.bins
    reliability = tuple(
        ReliabilityBin(
            lower=b * width,
            upper=(b + 1) * width,
            n=int(n_bin[b]),
            accuracy=_ratio(float(correct_bin[b]), float(n_bin[b])),
            mean_confidence=_ratio(float(score_bin[b]), float(n_bin[b])),
        )
        for b in range(counts.bins)
    )
    errors = int(counts.n[INCORRECT].sum())
    return ConfidenceSummary(
        scored=total,
        calibration_error=ece,
        mean_confidence_correct=_ratio(
            float(counts.score_sum[CORRECT].sum()), float(counts.n[CORRECT].sum())
        ),
        mean_confidence_incorrect=_ratio(float(counts.score_sum[INCORRECT].sum()), float(errors)),
        high_confidence_errors=int(counts.high[INCORRECT]),
        high_confidence_error_share=_ratio(float(counts.high[INCORRECT]), float(errors)),
        high_threshold=counts.high_threshold,
        invalid=counts.invalid,
        reliability=reliability,
    )


def score_bin(scores: NDArray[np.float64], bins: int) -> NDArray[np.int64]:
    """The bin of each score in [0, 1] (a score of exactly 1 falls in the last bin): the
    same rule the database query applies, for tests and reports."""
    return np.minimum(np.floor(np.asarray(scores) * bins), bins - 1).astype(np.int64)
