"""The window count query: one ``GROUP BY`` per monitor, pushed into Postgres.

Rows never travel into Python; only their counts per (bucket, model, version, segment,
predicted class, true class, rejection reason) do. Identifiers from the config are
quoted by SQLAlchemy and every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config import MonitorConfig, SourceConfig
from ..domain import ALL
from ..windows import Window
from .rejections import RowFields, label_delay_seconds, no_instant, rejection_reason

COUNT_COLUMNS = ["bucket", "model", "version", "segment", "predicted", "actual", "reason", "n", "delay_sum"]


def source_table(source: SourceConfig) -> sa.TableClause:
    """Describe the mapped table; SQLAlchemy quotes every identifier it renders."""
    names = {name for name in source.columns.model_dump().values() if name is not None}
    return sa.table(source.table_name, *(sa.column(n) for n in sorted(names)), schema=source.schema_name)


def arrived_label(
    table: sa.TableClause, actual: str, labeled_at: str | None, labels_as_of: datetime | None
) -> sa.ColumnElement[str]:
    """The true class as text, NULL where the label arrived after ``labels_as_of``."""
    label: sa.ColumnElement[str] = sa.cast(table.c[actual], sa.Text)
    if labels_as_of is None or labeled_at is None:
        return label
    arrived = table.c[labeled_at] <= sa.bindparam("labels_as_of", labels_as_of)
    return sa.case((arrived, label), else_=sa.null())


def window_columns(
    predicted_at: sa.ColumnElement[Any],
    windows: Sequence[Window],
    bucket: timedelta,
    is_future: sa.ColumnElement[bool],
) -> tuple[sa.ColumnElement[Any], sa.ColumnElement[bool]]:
    """(the first bucket of the row's window, or NULL; whether the row is in any window).

    One group per window, not per bucket: a row's group is its window's first bucket, so
    only window-level counts travel to Python (the windows are aligned to buckets).
    """
    bucket_seconds = int(bucket.total_seconds())

    def inside(w: Window) -> sa.ColumnElement[bool]:
        # One range per span (a seasonal reference has several): each an index range scan.
        return sa.or_(
            *(
                sa.and_(
                    predicted_at >= sa.bindparam(f"{w.name}_start{'' if k == 0 else f'_{k}'}", start),
                    predicted_at < sa.bindparam(f"{w.name}_end{'' if k == 0 else f'_{k}'}", end),
                )
                for k, (start, end) in enumerate(w.spans())
            )
        )

    window_bucket = sa.case(
        (is_future, sa.null()),
        *(
            (inside(w), sa.literal(int(w.start.timestamp()) // bucket_seconds, sa.BigInteger))
            for w in windows
        ),
        else_=sa.null(),
    )
    return window_bucket, sa.or_(*(inside(w) for w in windows))


def count_query(
    source: SourceConfig,
    monitor: MonitorConfig,
    windows: Sequence[Window],
    now: datetime,
    bucket: timedelta,
    future_tolerance: timedelta = timedelta(0),
    labels_as_of: datetime | None = None,
) -> sa.Select[tuple[object, ...]]:
    """Build the grouped count of ``monitor``'s rows over ``windows`` as of ``now``.

    ``labels_as_of`` (historical evaluations: ``snapshot --at``, ``backfill``) sees a past
    instant as it was: a label whose ``labeled_at`` is later has not arrived yet, and a row
    dated after ``now`` (plus the tolerance) did not exist yet, so it is left out rather than
    counted as ``future_timestamp``. Live evaluations count such rows as rejected.
    """
    table = source_table(source)
    cols = source.columns

    def text(name: str | None) -> sa.ColumnElement[str]:
        if name is None:
            return sa.literal(ALL, sa.Text)
        return sa.cast(table.c[name], sa.Text)

    historical = labels_as_of is not None
    predicted_at = table.c[cols.predicted_at]
    model, predicted = text(cols.model), text(cols.predicted)
    actual = arrived_label(table, cols.actual, cols.labeled_at, labels_as_of)
    labeled_at = table.c[cols.labeled_at] if cols.labeled_at is not None else None
    row = RowFields(model, predicted_at, predicted, actual, labeled_at)
    is_future = predicted_at > sa.bindparam("future_after", now + future_tolerance)
    reason = rejection_reason(row, future_tolerance, None if historical else is_future)
    # Rows that belong to no window (future, or no instant at all) count against the current one.
    unplaced = sa.or_(is_future, no_instant(predicted_at))
    window_bucket, in_a_window = window_columns(predicted_at, windows, bucket, unplaced)
    # The same rows as ``in_a_window OR unplaced``, written so that every arm is an index range
    # on the time column ('infinity' is future; isfinite() would force a scan of the table).
    filters: list[sa.ColumnElement[bool]] = [
        sa.or_(
            in_a_window, is_future, predicted_at.is_(None), predicted_at == sa.literal_column("'-infinity'")
        )
    ]
    if historical:
        # Dated after the instant: not written yet. A row without a date counts as it does live.
        filters.append(sa.or_(sa.not_(is_future), predicted_at.is_(None)))
    if monitor.model != "*":
        filters.append(table.c[cols.model] == sa.bindparam("model", monitor.model))
    grouped = [
        window_bucket.label("bucket"),
        model.label("model"),
        text(cols.version).label("version"),
        text(cols.segment).label("segment"),
        predicted.label("predicted"),
        actual.label("actual"),
        reason.label("reason"),
    ]
    delay_sum: sa.ColumnElement[Any] = sa.null()
    if labeled_at is not None:
        delay_sum = sa.func.sum(label_delay_seconds(row))
    return (
        sa.select(*grouped, sa.func.count().label("n"), delay_sum.label("delay_sum"))
        .select_from(table)
        .where(*filters)
        .group_by(*(sa.literal_column(str(i)) for i in range(1, len(grouped) + 1)))
    )


def fetch_counts(connection: Connection, query: sa.Select[tuple[object, ...]]) -> pd.DataFrame:
    """Run a count query and return its grouped rows as a DataFrame."""
    result = connection.execute(query)
    frame = pd.DataFrame(result.fetchall(), columns=COUNT_COLUMNS)
    frame["n"] = frame["n"].astype("int64")
    frame["delay_sum"] = pd.to_numeric(frame["delay_sum"], errors="coerce").astype("float64")
    return frame
