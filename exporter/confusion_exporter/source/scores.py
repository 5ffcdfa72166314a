"""Score aggregates per window, pushed into Postgres like the count query.

Two ``GROUP BY`` queries over the source table, for monitors whose source maps a score (the
model's probability for the class it predicted):

- confidence: per window, slice, outcome (correct or not) and score bin, the count, the sum
  of scores and the count at or above the high-confidence threshold. Scores outside [0, 1]
  (or NaN) fall in bin -1 and are counted as invalid, never binned;
- thresholds (two-class monitors with decision thresholds): per window, slice and true
  class, the scored predictions and, per threshold, how many have a positive-class
  probability at or above it.

Only labeled rows with a non-blank predicted and true class count; rows after ``now`` are left
out (the count query already reports them as rejected).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config import MonitorConfig, SourceConfig
from ..matrices import NULL, SliceKey
from ..stats.calibration import ConfidenceCounts
from ..stats.thresholds import ThresholdMatrix, threshold_matrices
from ..windows import Window
from .counts import ALL, arrived_label, source_table, window_columns

WindowKey = tuple[SliceKey, str]  # (slice, window name)


class _Columns:
    """The mapped columns as SQL expressions, and the filter every score query shares."""

    def __init__(
        self,
        source: SourceConfig,
        monitor: MonitorConfig,
        windows: Sequence[Window],
        now: datetime,
        bucket: timedelta,
        labels_as_of: datetime | None = None,
    ):
        cols = source.columns
        assert cols.score is not None
        score_column: str = cols.score
        table = source_table(source)

        def text(name: str | None) -> sa.ColumnElement[str]:
            return sa.literal(ALL, sa.Text) if name is None else sa.cast(table.c[name], sa.Text)

        self.table = table
        predicted_at = table.c[cols.predicted_at]
        is_future = predicted_at > sa.bindparam("future_after", now)
        self.window_bucket, in_a_window = window_columns(predicted_at, windows, bucket, is_future)
        self.slice = [text(cols.model), text(cols.version), text(cols.segment)]
        self.predicted = text(cols.predicted)
        self.actual = arrived_label(table, cols.actual, cols.labeled_at, labels_as_of)
        self.score = sa.cast(table.c[score_column], sa.Float)
        self.filters = [
            in_a_window,
            sa.not_(is_future),
            table.c[cols.model].is_not(None),
            self.score.is_not(None),
            self.actual.is_not(None),
            sa.func.btrim(self.predicted) != "",
            sa.func.btrim(self.actual) != "",
        ]
        if monitor.model != "*":
            self.filters.append(table.c[cols.model] == sa.bindparam("model", monitor.model))


def confidence_query(
    source: SourceConfig,
    monitor: MonitorConfig,
    windows: Sequence[Window],
    now: datetime,
    bucket: timedelta,
    labels_as_of: datetime | None = None,
) -> sa.Select[tuple[object, ...]]:
    c = _Columns(source, monitor, windows, now, bucket, labels_as_of)
    bins = monitor.calibration_bins
    valid = sa.and_(c.score >= 0, c.score <= 1)  # NaN >= 0 holds in Postgres, NaN <= 1 does not
    score_bin = sa.case(
        (valid, sa.func.least(sa.func.floor(c.score * bins), bins - 1)), else_=sa.literal(-1)
    ).cast(sa.Integer)
    correct = sa.case((c.predicted == c.actual, 1), else_=0)
    grouped = [c.window_bucket, *c.slice, correct, score_bin]
    return (
        sa.select(
            *grouped,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((valid, c.score), else_=0.0)), 0.0),
            sa.func.count().filter(sa.and_(valid, c.score >= sa.bindparam("high", monitor.high_confidence))),
        )
        .select_from(c.table)
        .where(*c.filters)
        .group_by(*(sa.literal_column(str(i)) for i in range(1, len(grouped) + 1)))
    )


def threshold_query(
    source: SourceConfig,
    monitor: MonitorConfig,
    windows: Sequence[Window],
    now: datetime,
    bucket: timedelta,
    labels_as_of: datetime | None = None,
) -> sa.Select[tuple[object, ...]]:
    assert monitor.classes is not None and monitor.positive_class is not None
    c = _Columns(source, monitor, windows, now, bucket, labels_as_of)
    classes: sa.BindParameter[list[str]] = sa.bindparam("two_classes", list(monitor.classes), expanding=True)
    positive: sa.BindParameter[str] = sa.bindparam("positive", monitor.positive_class)
    probability = sa.case((c.predicted == positive, c.score), else_=1.0 - c.score)
    reaching = [
        sa.func.count().filter(probability >= sa.bindparam(f"t{i}", t))
        for i, t in enumerate(monitor.decision_thresholds)
    ]
    grouped = [c.window_bucket, *c.slice, c.actual]
    return (
        sa.select(*grouped, sa.func.count(), *reaching)
        .select_from(c.table)
        .where(*c.filters, c.score >= 0, c.score <= 1, c.predicted.in_(classes), c.actual.in_(classes))
        .group_by(*(sa.literal_column(str(i)) for i in range(1, len(grouped) + 1)))
    )


def _keys(row: Sequence[Any], windows: Sequence[Window], bucket: timedelta) -> WindowKey | None:
    size = int(bucket.total_seconds())
    name = next((w.name for w in windows if int(w.start.timestamp()) // size == row[0]), None)
    if name is None:
        return None
    model, version, segment = (NULL if v is None else str(v) for v in row[1:4])
    return SliceKey(model, version, segment), name


def fetch_confidence(
    connection: Connection,
    source: SourceConfig,
    monitor: MonitorConfig,
    windows: Sequence[Window],
    now: datetime,
    bucket: timedelta,
    labels_as_of: datetime | None = None,
) -> dict[WindowKey, ConfidenceCounts]:
    """Confidence aggregates per (slice, window) with scored, labeled predictions."""
    bins = monitor.calibration_bins
    parts: dict[WindowKey, dict[str, Any]] = {}
    rows: list[Sequence[Any]] = list(
        connection.execute(confidence_query(source, monitor, windows, now, bucket, labels_as_of))
    )
    for row in rows:
        key = _keys(row, windows, bucket)
        if key is None:
            continue
        part = parts.setdefault(
            key,
            {
                "n": np.zeros((2, bins), np.int64),
                "sum": np.zeros((2, bins)),
                "high": np.zeros(2, np.int64),
                "bad": 0,
            },
        )
        correct, score_bin, n, score_sum, high = (
            int(row[4]),
            int(row[5]),
            int(row[6]),
            float(row[7]),
            int(row[8]),
        )
        if score_bin < 0:
            part["bad"] += n
            continue
        part["n"][correct, score_bin] += n
        part["sum"][correct, score_bin] += score_sum
        part["high"][correct] += high
    return {
        key: ConfidenceCounts(bins, p["n"], p["sum"], p["high"], monitor.high_confidence, p["bad"])
        for key, p in parts.items()
    }


def fetch_threshold_matrices(
    connection: Connection,
    source: SourceConfig,
    monitor: MonitorConfig,
    windows: Sequence[Window],
    now: datetime,
    bucket: timedelta,
    labels_as_of: datetime | None = None,
) -> dict[WindowKey, tuple[ThresholdMatrix, ...]]:
    """Matrices at each decision threshold per (slice, window), for a two-class monitor."""
    assert monitor.classes is not None and monitor.positive_class is not None
    negative = next(c for c in monitor.classes if c != monitor.positive_class)
    scored: dict[WindowKey, dict[str, int]] = {}
    reaching: dict[WindowKey, dict[str, dict[float, int]]] = {}
    rows: list[Sequence[Any]] = list(
        connection.execute(threshold_query(source, monitor, windows, now, bucket, labels_as_of))
    )
    for row in rows:
        key = _keys(row, windows, bucket)
        if key is None:
            continue
        true_class = str(row[4])
        scored.setdefault(key, {})[true_class] = int(row[5])
        reaching.setdefault(key, {})[true_class] = {
            t: int(k) for t, k in zip(monitor.decision_thresholds, row[6:], strict=True)
        }
    return {
        key: threshold_matrices(negative, monitor.positive_class, scored[key], reaching[key])
        for key in scored
    }
