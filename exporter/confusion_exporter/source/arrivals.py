"""Label arrivals per period: what the sequential layer reads.

The detector (stats/sequential.py) takes, every period, the K x K matrix of the predictions
whose label *arrived* in that period. Keyed by arrival, a period's counts never change once it
has passed (labels are appended, not rewritten), so the detector's state at an instant is a
function of the data as it stood then: a restart, ``snapshot --at`` and ``backfill`` replay
the same periods and reach the same state as the live exporter, bit for bit.

A source with ``rollup`` names the reference schema's append-only tables: there each prediction
is counted once, at its *first* label's arrival, with that label (a correction is a later row
and changes nothing already counted), which is exact whatever corrections come later
(:func:`first_labels_query`). Otherwise the mapped table is read as it is now. A source
without ``labeled_at`` has no arrival times: its rows are placed by ``predicted_at``
(labels taken to arrive with their predictions), which is exact only if they do. A label
rewritten in place (a correction that overwrites ``actual`` and ``labeled_at``) moves to the
correction's period: the live exporter counted it at its first arrival too. Both are in
docs/statistics.md ("What is approximate").

Rows are filtered by the same rejection expression as the window counts (rejections.py), so
a row the matrices reject never reaches the detector; identifiers are quoted by SQLAlchemy
and every value is bound.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config import MonitorConfig, SourceConfig
from ..domain import ALL
from .class_cap import ClassCap, capped_counts, fetch_capped
from .counts import source_table
from .rejections import RowFields, rejection_reason

ARRIVAL_COLUMNS = ["period", "model", "segment", "predicted", "actual", "n"]


def arrival_time(source: SourceConfig) -> str:
    """The column that dates a label's arrival."""
    return source.columns.labeled_at or source.columns.predicted_at


def arrivals_query(
    source: SourceConfig,
    monitor: MonitorConfig,
    start: datetime,
    end: datetime,
    period: timedelta,
    future_tolerance: timedelta,
) -> sa.Select[tuple[object, ...]]:
    """Counts of good labeled rows per (arrival period, model, segment, predicted, actual)
    for arrivals in ``[start, end)``; ``period`` numbers periods from the epoch."""
    table = source_table(source)
    cols = source.columns

    def text(name: str | None) -> sa.ColumnElement[str]:
        if name is None:
            return sa.literal(ALL, sa.Text)
        return sa.cast(table.c[name], sa.Text)

    arrived_at = table.c[arrival_time(source)]
    predicted_at = table.c[cols.predicted_at]
    labeled_at = table.c[cols.labeled_at] if cols.labeled_at is not None else None
    model, predicted, actual = text(cols.model), text(cols.predicted), text(cols.actual)
    row = RowFields(model, predicted_at, predicted, actual, labeled_at)
    seconds = int(period.total_seconds())
    period_number = sa.cast(
        sa.func.floor(sa.extract("epoch", sa.cast(arrived_at, sa.DateTime(timezone=True))) / seconds),
        sa.BigInteger,
    )
    filters: list[sa.ColumnElement[bool]] = [
        # A range on the arrival column: an index on it serves the query; 'infinity' and NULL
        # fall outside any range.
        arrived_at >= sa.bindparam("arrivals_start", start),
        arrived_at < sa.bindparam("arrivals_end", end),
        table.c[cols.actual].is_not(None),
        rejection_reason(row, future_tolerance).is_(None),
    ]
    if monitor.model != "*":
        filters.append(table.c[cols.model] == sa.bindparam("model", monitor.model))
    return (
        _counted(period_number, model, text(cols.segment), predicted, actual)
        .select_from(table)
        .where(*filters)
    )


def _counted(
    period: sa.ColumnElement[Any],
    model: sa.ColumnElement[Any],
    segment: sa.ColumnElement[Any],
    predicted: sa.ColumnElement[Any],
    actual: sa.ColumnElement[Any],
) -> sa.Select[Any]:
    """The grouped counts in the window count query's columns (``COUNT_COLUMNS``), so the class
    cap (class_cap.py) wraps them: the period stands in as the bucket and as the version, so the
    cap ranks the classes of each slice in each period on their own (a period's counts never
    change, so neither does its ranking: a replay caps exactly as the live exporter did)."""
    grouped: list[sa.ColumnElement[Any]] = [
        period.label("bucket"),
        model.label("model"),
        sa.cast(period, sa.Text).label("version"),
        segment.label("segment"),
        predicted.label("predicted"),
        actual.label("actual"),
        sa.cast(sa.null(), sa.Text).label("reason"),
    ]
    return sa.select(
        *grouped, sa.func.count().label("n"), sa.cast(sa.null(), sa.Float).label("delay_sum")
    ).group_by(*(sa.literal_column(str(i)) for i in range(1, len(grouped) + 1)))


def _qualified(name: str, columns: tuple[str, ...]) -> sa.TableClause:
    schema, _, table = name.rpartition(".")
    return sa.table(table, *(sa.column(c) for c in columns), schema=schema or None)


def first_labels_query(
    source: SourceConfig,
    monitor: MonitorConfig,
    start: datetime,
    end: datetime,
    period: timedelta,
    future_tolerance: timedelta,
) -> sa.Select[tuple[object, ...]]:
    """Like :func:`arrivals_query`, over the reference schema's predictions and append-only
    labels (a ``rollup`` source's tables): each prediction counted at its first label."""
    assert source.rollup is not None
    prediction_columns = ("id", "model_name", "segment", "predicted_at", "predicted_class")
    label_columns = ("id", "prediction_id", "true_class", "labeled_at")
    lab = _qualified(source.rollup.labels, label_columns).alias("l")
    predictions = _qualified(source.rollup.predictions, prediction_columns).alias("pp")
    # One primary-key probe per label (LATERAL): a period's labels are few, the predictions
    # table is the whole history; a hash join would scan all of it for every read. LIMIT 1
    # (the id is unique, so it changes no row) keeps the planner from flattening the probe
    # into a join: flattened, a misestimated label range (rows=1) made it scan every
    # prediction of the model once per label, minutes per read on 170,000 predictions.
    p = (
        sa.select(*(predictions.c[c] for c in prediction_columns))
        .where(predictions.c.id == lab.c.prediction_id)
        .limit(1)
        .lateral("p")
    )
    earlier = _qualified(source.rollup.labels, label_columns).alias("e")
    model = sa.cast(p.c.model_name, sa.Text)
    predicted, actual = sa.cast(p.c.predicted_class, sa.Text), sa.cast(lab.c.true_class, sa.Text)
    row = RowFields(model, p.c.predicted_at, predicted, actual, lab.c.labeled_at)
    seconds = int(period.total_seconds())
    period_number = sa.cast(sa.func.floor(sa.extract("epoch", lab.c.labeled_at) / seconds), sa.BigInteger)
    segment: sa.ColumnElement[Any] = (
        sa.cast(p.c.segment, sa.Text) if source.columns.segment is not None else sa.literal(ALL, sa.Text)
    )
    first = ~sa.exists().where(earlier.c.prediction_id == lab.c.prediction_id, earlier.c.id < lab.c.id)
    filters: list[sa.ColumnElement[bool]] = [
        lab.c.labeled_at >= sa.bindparam("arrivals_start", start),
        lab.c.labeled_at < sa.bindparam("arrivals_end", end),
        lab.c.true_class.is_not(None),
        first,
        rejection_reason(row, future_tolerance).is_(None),
    ]
    if monitor.model != "*":
        filters.append(p.c.model_name == sa.bindparam("model", monitor.model))
    return (
        _counted(period_number, model, segment, predicted, actual)
        .select_from(lab.join(p, sa.true()))
        .where(*filters)
    )


def period_query(
    source: SourceConfig,
    monitor: MonitorConfig,
    start: datetime,
    end: datetime,
    period: timedelta,
    future_tolerance: timedelta,
) -> sa.Select[tuple[object, ...]]:
    """The arrivals of ``[start, end)`` from the best place the source offers."""
    build = first_labels_query if source.rollup is not None else arrivals_query
    return build(source, monitor, start, end, period, future_tolerance)


def fetch_arrivals(connection: Connection, query: sa.Select[Any], cap: ClassCap) -> pd.DataFrame:
    """Run an arrivals query with the class cap applied in SQL, per slice and period; rows the
    cap rejects (outside configured classes: ``unknown_class``) are left out."""
    rows, _ = fetch_capped(connection, capped_counts(query, cap))
    rows = rows[rows["reason"].isna()]
    frame = pd.DataFrame(
        {
            "period": rows["bucket"].astype("int64"),
            "model": rows["model"],
            "segment": rows["segment"],
            "predicted": rows["predicted"],
            "actual": rows["actual"],
            "n": rows["n"].astype("int64"),
        },
        columns=ARRIVAL_COLUMNS,
    )
    return frame.sort_values("period", kind="stable").reset_index(drop=True)


def first_arrival_query(source: SourceConfig, monitor: MonitorConfig) -> sa.Select[tuple[Any]]:
    """The first prediction time of the monitor's rows (the default replay origin). On
    ``predicted_at``, which the window queries already need indexed."""
    table = source_table(source)
    cols = source.columns
    predicted_at = table.c[cols.predicted_at]
    query = sa.select(sa.func.min(predicted_at)).where(sa.func.isfinite(predicted_at))
    if monitor.model != "*":
        query = query.where(table.c[cols.model] == sa.bindparam("model", monitor.model))
    return query
