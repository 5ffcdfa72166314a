"""Binary confusion matrices at other decision thresholds, from counts the database computed.

For a two-class monitor with a score (the probability of the predicted class), the
probability of the positive class is ``score`` where the model predicted the positive class
and ``1 - score`` where it predicted the negative one. At threshold t a prediction is
positive when that probability is >= t. Per true class the database returns the number of
scored labeled predictions and, per threshold, how many reach it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..domain import ThresholdMatrix


def threshold_matrices(
    negative: str,
    positive: str,
    scored: Mapping[str, int],
    reaching: Mapping[str, Mapping[float, int]],
) -> tuple[ThresholdMatrix, ...]:
    """Build one matrix per threshold from per-true-class totals and counts at or above it.

    ``scored[c]``: scored predictions whose true class is c; ``reaching[c][t]``: those of them
    whose positive-class probability is >= t.
    """
    thresholds = sorted({t for by_t in reaching.values() for t in by_t})
    out = []
    for t in thresholds:
        matrix = np.zeros((2, 2), np.int64)
        for row, cls in enumerate((negative, positive)):
            n = int(scored.get(cls, 0))
            k = int(reaching.get(cls, {}).get(t, 0))
            matrix[row] = (n - k, k)
        matrix.setflags(write=False)
        out.append(ThresholdMatrix(t, (negative, positive), matrix))
    return tuple(out)
