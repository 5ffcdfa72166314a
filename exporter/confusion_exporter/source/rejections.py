"""Why a row is not counted in a matrix: the reasons, and the one expression that assigns them.

Every read path builds its reason and its label delay here, so none can call a row good that
another rejects: the full count query (``counts.py``) over the mapped columns, the score
aggregates (``scores.py``), and the rollup fold (``rollup.py``), which compiles the same
expressions to SQL text over its predictions and labels. The reasons only look at one row;
``future_timestamp`` also needs "now", which only a read knows (the rollup applies it when
it sums its buckets).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from ..blank import BLANK_CHARACTERS
from ..domain import (  # noqa: F401 (the reasons live in domain.py; re-exported for the SQL beside them)
    EMPTY_TRUE_CLASS,
    FUTURE_TIMESTAMP,
    LABEL_BEFORE_PREDICTION,
    LABEL_WITHOUT_PREDICTION,
    MISSING_MODEL,
    MISSING_PREDICTED_CLASS,
    MISSING_TIMESTAMP,
    NON_FINITE_TIMESTAMP,
    REJECT_REASONS,
    UNKNOWN_CLASS,
)


@dataclass(frozen=True)
class RowFields:
    """One row's fields as SQL expressions; ``actual`` is NULL while the row is unlabeled."""

    model: sa.ColumnElement[Any]
    predicted_at: sa.ColumnElement[Any]
    predicted: sa.ColumnElement[Any]
    actual: sa.ColumnElement[Any]
    labeled_at: sa.ColumnElement[Any] | None = None


# The blank characters as one escaped SQL constant: plain ASCII in the statement and its logs.
_BLANK_SQL = "E'" + "".join(f"\\u{ord(c):04x}" for c in BLANK_CHARACTERS) + "'"


def blank(expr: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """NULL, or nothing left after stripping the blank characters (the config's rule too)."""
    characters = sa.literal_column(_BLANK_SQL, sa.Text)
    # btrim with a set costs 3x plain btrim per row (1M rows: 0.35 s against 0.16 s); a name
    # whose first character is not blank is not blank, and that test costs what btrim did.
    # ('' passes it: strpos(set, '') is 1.)
    starts_blank = sa.func.strpos(characters, sa.func.left(expr, 1)) > 0
    return sa.or_(expr.is_(None), sa.and_(starts_blank, sa.func.btrim(expr, characters) == ""))


def non_finite(timestamp: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """``'infinity'``/``'-infinity'``: they compare, but any arithmetic on them fails the
    statement (a delay, a bucket number), so they are tested before anything computes."""
    return sa.not_(sa.func.isfinite(timestamp))


def no_instant(timestamp: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """NULL or non-finite: a prediction time no window can hold."""
    return sa.or_(timestamp.is_(None), non_finite(timestamp))


def rejection_reason(
    row: RowFields,
    label_tolerance: timedelta,
    is_future: sa.ColumnElement[bool] | None = None,
) -> sa.ColumnElement[Any]:
    """The reason ``row`` is left out of the matrix, or NULL for a good row.

    The first that applies wins. A timestamp problem comes first: a row without an instant
    cannot be judged further, and a future row is one whatever else is wrong with it.
    ``label_tolerance`` (``exporter.future_tolerance``) is the clock skew already accepted
    between hosts: a label at most that much before its prediction is counted (its delay
    is 0), an earlier one is rejected.
    """
    labeled = row.actual.is_not(None)
    branches: list[tuple[sa.ColumnElement[bool], str]] = [
        (row.predicted_at.is_(None), MISSING_TIMESTAMP),
        (non_finite(row.predicted_at), NON_FINITE_TIMESTAMP),
    ]
    if is_future is not None:
        branches.append((is_future, FUTURE_TIMESTAMP))
    if row.labeled_at is not None:
        # A label without labeled_at is counted (with no delay): many tables leave it empty.
        branches.append((sa.and_(labeled, non_finite(row.labeled_at)), NON_FINITE_TIMESTAMP))
    branches += [
        (blank(row.model), MISSING_MODEL),
        (sa.and_(blank(row.predicted), sa.not_(blank(row.actual))), LABEL_WITHOUT_PREDICTION),
        (blank(row.predicted), MISSING_PREDICTED_CLASS),
        (sa.and_(labeled, blank(row.actual)), EMPTY_TRUE_CLASS),
    ]
    if row.labeled_at is not None:
        earliest = row.predicted_at - _interval(label_tolerance)
        branches.append((sa.and_(labeled, row.labeled_at < earliest), LABEL_BEFORE_PREDICTION))
    return sa.case(*branches, else_=sa.null())


def label_delay_seconds(row: RowFields) -> sa.ColumnElement[Any]:
    """Seconds from prediction to label of a labeled row, never negative; NULL otherwise.

    Only rows with two instants are subtracted (an infinite one fails the statement). A label
    within the tolerance before its prediction is clock skew: its delay is 0, so the mean
    delay cannot go negative. Rejected rows get a delay too, but no matrix counts it.
    """
    assert row.labeled_at is not None
    measurable = sa.and_(
        row.actual.is_not(None), sa.func.isfinite(row.predicted_at), sa.func.isfinite(row.labeled_at)
    )
    # As timestamptz: a date minus a date is a number of days, which has no epoch.
    instant = sa.DateTime(timezone=True)
    elapsed = sa.cast(row.labeled_at, instant) - sa.cast(row.predicted_at, instant)
    delay = sa.func.greatest(sa.extract("epoch", elapsed), 0)
    return sa.case((measurable, delay), else_=sa.null())


def _interval(value: timedelta) -> sa.ColumnElement[Any]:
    # Text cast to interval: the same SQL bound or rendered literally (see ``to_sql``).
    return sa.cast(sa.literal(f"{value.total_seconds()} seconds", sa.Text), sa.Interval)


def to_sql(expression: sa.ColumnElement[Any]) -> str:
    """Render an expression of this module as PostgreSQL text, for the rollup's SQL.

    Its only values are this module's constants and the configured tolerance, rendered as
    literals; its columns are the caller's fixed aliases (``p.predicted_class``).
    """
    compiled = expression.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    return str(compiled)
