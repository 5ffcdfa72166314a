"""Score aggregates per window, pushed into Postgres like the count query.

Two ``GROUP BY`` queries over the source table, for monitors whose source maps a score (the
model's probability for the class it predicted):

- confidence: per window, slice, outcome (correct or not) and score bin, the count, the sum
  of scores and the count at or above the high-confidence threshold. Scores outside [0, 1]
  (or NaN) fall in bin -1 and are counted as invalid, never binned;
- thresholds (two-class monitors with decision thresholds): per window, slice and true
  class, the scored predictions and, per threshold, how many have a positive-class
  probability at or above it.

Only labeled rows the count query counts in a matrix are aggregated: the same rejection
expression (``rejections.py``) leaves out the others, which the count query reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config import MonitorConfig, SourceConfig
from ..domain import ALL, NULL, ConfidenceCounts, SliceKey
from ..windows import Window
from .counts import arrived_label, source_table, window_columns
from .rejections import RowFields, rejection_reason

WindowKey = tuple[SliceKey, str]  # (slice, window name)


@dataclass(frozen=True)
class ScoreScope:
    """What both score queries are about: one monitor's windows as of ``now``."""

    source: SourceConfig
    monitor: MonitorConfig
    windows: Sequence[Window]
    now: datetime
    bucket: timedelta
    labels_as_of: datetime | None = None  # historical evaluations: labels arrived by then
    future_tolerance: timedelta = timedelta(0)  # exporter.future_tolerance, as in the count query

    def rows(
        self, connection: Connection, query: sa.Select[tuple[object, ...]]
    ) -> list[tuple[WindowKey, Any]]:
        """Run a query grouped by (window, model, version, segment, ...) and key each row by
        (slice, window name); rows outside the windows are dropped."""
        size = int(self.bucket.total_seconds())
        names = {int(w.start.timestamp()) // size: w.name for w in self.windows}
        out = []
        row: Any
        for row in connection.execute(query):
            name = names.get(int(row[0])) if row[0] is not None else None
            if name is not None:
                model, version, segment = (NULL if v is None else str(v) for v in row[1:4])
                out.append(((SliceKey(model, version, segment), name), row[4:]))
        return out


class _Columns:
    """The mapped columns as SQL expressions, and the filter every score query shares."""

    def __init__(self, scope: ScoreScope):
        cols = scope.source.columns
        assert cols.score is not None
        score_column: str = cols.score
        table = source_table(scope.source)

        def text(name: str | None) -> sa.ColumnElement[str]:
            return sa.literal(ALL, sa.Text) if name is None else sa.cast(table.c[name], sa.Text)

        self.table = table
        predicted_at = table.c[cols.predicted_at]
        is_future = predicted_at > sa.bindparam("future_after", scope.now + scope.future_tolerance)
        self.window_bucket, in_a_window = window_columns(predicted_at, scope.windows, scope.bucket, is_future)
        self.slice = [text(cols.model), text(cols.version), text(cols.segment)]
        self.predicted = text(cols.predicted)
        self.actual = arrived_label(table, cols.actual, cols.labeled_at, scope.labels_as_of)
        labeled_at = table.c[cols.labeled_at] if cols.labeled_at is not None else None
        row = RowFields(self.slice[0], predicted_at, self.predicted, self.actual, labeled_at)
        self.score = sa.cast(table.c[score_column], sa.Float)
        self.valid = sa.and_(self.score >= 0, self.score <= 1)  # NaN >= 0 holds in Postgres, NaN <= 1 not
        self.filters = [
            in_a_window,
            rejection_reason(row, scope.future_tolerance, is_future).is_(None),  # the matrix's rows only
            self.score.is_not(None),
            self.actual.is_not(None),
        ]
        if scope.monitor.model != "*":
            self.filters.append(table.c[cols.model] == sa.bindparam("model", scope.monitor.model))
        if scope.monitor.classes is not None:
            # The matrix rejects other classes as unknown_class (matrices.py); so do the scores.
            configured: sa.BindParameter[list[str]] = sa.bindparam(
                "configured_classes", list(scope.monitor.classes), expanding=True
            )
            self.filters += [self.predicted.in_(configured), self.actual.in_(configured)]

    def grouped(
        self, keys: list[sa.ColumnElement[Any]], aggregates: list[sa.ColumnElement[Any]], *filters: Any
    ) -> sa.Select[tuple[object, ...]]:
        """SELECT window, slice, ``keys``, ``aggregates`` ... GROUP BY the window, slice and keys."""
        grouped = [self.window_bucket, *self.slice, *keys]
        return (
            sa.select(*grouped, *aggregates)
            .select_from(self.table)
            .where(*self.filters, *filters)
            .group_by(*(sa.literal_column(str(i)) for i in range(1, len(grouped) + 1)))
        )


def confidence_query(scope: ScoreScope) -> sa.Select[tuple[object, ...]]:
    c, monitor = _Columns(scope), scope.monitor
    bins = monitor.calibration_bins
    score_bin = sa.case(
        (c.valid, sa.func.least(sa.func.floor(c.score * bins), bins - 1)), else_=sa.literal(-1)
    ).cast(sa.Integer)
    correct = sa.case((c.predicted == c.actual, 1), else_=0)
    return c.grouped(
        [correct, score_bin],
        [
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((c.valid, c.score), else_=0.0)), 0.0),
            sa.func.count().filter(
                sa.and_(c.valid, c.score >= sa.bindparam("high", monitor.high_confidence))
            ),
        ],
    )


def threshold_query(scope: ScoreScope) -> sa.Select[tuple[object, ...]]:
    c, monitor = _Columns(scope), scope.monitor
    assert monitor.classes is not None and monitor.positive_class is not None
    classes: sa.BindParameter[list[str]] = sa.bindparam("two_classes", list(monitor.classes), expanding=True)
    positive: sa.BindParameter[str] = sa.bindparam("positive", monitor.positive_class)
    probability = sa.case((c.predicted == positive, c.score), else_=1.0 - c.score)
    reaching = [
        sa.func.count().filter(probability >= sa.bindparam(f"t{i}", t))
        for i, t in enumerate(monitor.decision_thresholds)
    ]
    return c.grouped(
        [c.actual], [sa.func.count(), *reaching], c.valid, c.predicted.in_(classes), c.actual.in_(classes)
    )


def fetch_confidence(connection: Connection, scope: ScoreScope) -> dict[WindowKey, ConfidenceCounts]:
    """Confidence aggregates per (slice, window) with scored, labeled predictions."""
    monitor = scope.monitor
    bins = monitor.calibration_bins
    out: dict[WindowKey, ConfidenceCounts] = {}
    for key, (correct, score_bin, n, score_sum, high) in scope.rows(connection, confidence_query(scope)):
        counts = out.setdefault(key, ConfidenceCounts.empty(bins, monitor.high_confidence))
        if score_bin < 0:
            out[key] = replace(counts, invalid=counts.invalid + int(n))
            continue
        counts.n[int(correct), int(score_bin)] += int(n)
        counts.score_sum[int(correct), int(score_bin)] += float(score_sum)
        counts.high[int(correct)] += int(high)
    return out


# Per true class: scored labeled predictions, and per threshold how many of them reach it.
ThresholdCounts = tuple[dict[str, int], dict[str, dict[float, int]]]


def fetch_threshold_counts(connection: Connection, scope: ScoreScope) -> dict[WindowKey, ThresholdCounts]:
    """What the matrices at each decision threshold are built from (stats/thresholds.py), per
    (slice, window), for a two-class monitor."""
    monitor = scope.monitor
    out: dict[WindowKey, ThresholdCounts] = {}
    for key, (true_class, n, *at) in scope.rows(connection, threshold_query(scope)):
        scored, reaching = out.setdefault(key, ({}, {}))
        scored[str(true_class)] = int(n)
        reaching[str(true_class)] = {t: int(k) for t, k in zip(monitor.decision_thresholds, at, strict=True)}
    return out
